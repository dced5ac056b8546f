"""The experiment-tracker keys of the config: ``runtime.trackers`` and the W&B / MLflow settings.

``runtime.trackers`` lists where a training run sends its config, scalars, evaluation metrics and checkpoint
events (see :mod:`detector.engine.trackers`); ``runtime.wandb`` / ``runtime.mlflow`` are read only when their
tracker is listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

TrackerName = Literal["tensorboard", "jsonl", "wandb", "mlflow"]
TRACKER_NAMES: tuple[str, ...] = ("tensorboard", "jsonl", "wandb", "mlflow")
DEFAULT_TRACKERS: tuple[str, ...] = ("tensorboard", "jsonl")


@dataclass(frozen=True)
class WandbConfig:
    project: str = "focaldet"
    entity: Optional[str] = None     # the W&B team or user (online mode); null: the account's default
    run_name: Optional[str] = None   # null: the work dir's name
    # offline: files under <work_dir>/wandb only (upload later with `wandb sync`); online: streamed to the server.
    mode: Literal["offline", "online"] = "offline"
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.project.strip():
            raise ValueError("runtime.wandb.project must be a non-empty name")


@dataclass(frozen=True)
class MlflowConfig:
    # null: the local file store file:<work_dir>/mlruns; or any MLflow tracking URI (http://..., sqlite:///...).
    tracking_uri: Optional[str] = None
    experiment: str = "focaldet"
    run_name: Optional[str] = None   # null: the work dir's name

    def __post_init__(self):
        if not self.experiment.strip():
            raise ValueError("runtime.mlflow.experiment must be a non-empty name")


def check_tracker_names(names: list[str]) -> None:
    """Raise ValueError for an unknown or repeated name in ``runtime.trackers``."""
    unknown = [name for name in names if name not in TRACKER_NAMES]
    if unknown:
        raise ValueError(f"runtime.trackers: unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKER_NAMES)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"runtime.trackers lists {repeated[0]!r} twice")
