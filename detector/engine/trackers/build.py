"""``runtime.trackers`` (+ ``runtime.wandb`` / ``runtime.mlflow``) -> the run's :class:`TrackerList`."""

from __future__ import annotations

from pathlib import Path

from detector.config_schema import Config
from detector.config_trackers import check_tracker_names
from detector.engine.trackers.base import Tracker, TrackerList
from detector.engine.trackers.local import JsonlTracker, TensorBoardTracker
from detector.engine.trackers.optional import TrackerStartError, TrackerUnavailableError

__all__ = ["build_trackers"]


def _build_one(name: str, cfg: Config, work_dir: Path) -> Tracker:
    if name == "tensorboard":
        return TensorBoardTracker(work_dir)
    if name == "jsonl":
        return JsonlTracker(work_dir)
    if name == "wandb":  # the module imports nothing optional; the tracker imports wandb when built
        from detector.engine.trackers.wandb_tracker import WandbTracker
        w = cfg.runtime.wandb
        return WandbTracker(work_dir, project=w.project, entity=w.entity, run_name=w.run_name, mode=w.mode,
                            tags=w.tags)
    from detector.engine.trackers.mlflow_tracker import MlflowTracker
    m = cfg.runtime.mlflow
    return MlflowTracker(work_dir, experiment=m.experiment, tracking_uri=m.tracking_uri, run_name=m.run_name)


def build_trackers(cfg: Config, work_dir: str | Path) -> TrackerList:
    """The trackers ``cfg.runtime.trackers`` lists, in its order (call on the main process only).

    Raises ValueError for an unknown or repeated name, TrackerUnavailableError (naming the focaldet extra to
    install) when a chosen tracker's package is missing and TrackerStartError naming the tracker when it cannot
    be made (e.g. an MLflow tracking URI it does not serve); trackers built before the failing one are closed."""
    names = list(cfg.runtime.trackers)
    check_tracker_names(names)
    built: list[Tracker] = []
    try:
        for name in names:
            try:
                built.append(_build_one(name, cfg, Path(work_dir)))
            except (TrackerUnavailableError, KeyboardInterrupt):
                raise
            except Exception as error:
                raise TrackerStartError(f"the {name} tracker (runtime.trackers) could not start: "
                                        f"{type(error).__name__}: {error}") from error
    except BaseException:
        TrackerList(built).close()
        raise
    return TrackerList(built)
