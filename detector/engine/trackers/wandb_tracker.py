"""Weights & Biases: the run's config, scalars and evaluation metrics in a W&B run (offline by default).

Offline, everything stays in ``<work_dir>/wandb/offline-run-<time>-<id>/`` (``run-<id>.wandb`` holds the
history); ``wandb sync <that dir>`` uploads it later. The W&B run id is kept in ``<work_dir>/wandb_run_id.txt``,
so a resumed training run logs into the same W&B run: offline, each session writes its own folder with that id,
and ``wandb sync`` uploads the folders of one run in the order they started. The ``wandb`` package is imported
only when this tracker is built (``pip install 'focaldet[wandb]'``).
"""

from __future__ import annotations

from pathlib import Path

from detector.engine.trackers.base import TRAIN_PREFIX, VAL_PREFIX, Tracker, prefixed, run_status
from detector.engine.trackers.optional import RunIdFile, import_optional

__all__ = ["WandbTracker"]

EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 2}


class WandbTracker(Tracker):
    """``project`` / ``entity`` / ``run_name`` (None: the work dir's name) / ``mode`` ("offline" or "online") /
    ``tags``, as W&B's ``wandb.init`` takes them; files go under ``work_dir``."""

    name = "wandb"

    def __init__(self, work_dir: Path, project: str, entity: str | None = None, run_name: str | None = None,
                 mode: str = "offline", tags: list[str] | tuple[str, ...] = ()):
        self.wandb = import_optional("wandb", "wandb", "wandb")  # before training starts: a clear error
        self.work_dir = Path(work_dir)
        self.settings = dict(project=project, entity=entity, name=run_name or self.work_dir.resolve().name,
                             mode=mode, tags=list(tags))
        self.run_id_file = RunIdFile(self.work_dir / "wandb_run_id.txt")
        self.run = None

    def on_train_start(self, config, iteration):
        wandb = self.wandb
        previous = self.run_id_file.previous(iteration)  # None: W&B makes a new id
        self.run = wandb.init(dir=str(self.work_dir), config=dict(config), id=previous,
                              resume="allow" if previous else None,
                              settings=wandb.Settings(console="off"), **self.settings)  # our logs stay ours
        self.run_id_file.write(self.run.id)

    def on_log_step(self, iteration, scalars):
        if self.run is not None:
            self.run.log(prefixed(TRAIN_PREFIX, scalars), step=iteration)

    def on_evaluation(self, iteration, metrics, images, pr_curves):
        if self.run is not None:
            self.run.log(prefixed(VAL_PREFIX, metrics), step=iteration)

    def on_best(self, iteration, values):
        if self.run is not None:  # the run's summary: the best so far, not a curve
            self.run.summary.update(dict(values))

    def on_checkpoint(self, iteration, path):
        if self.run is not None:
            self.run.summary.update({"checkpoint": str(path), "checkpoint_iteration": iteration})

    def on_train_end(self, iteration, metrics):
        self._finish("finished")

    def on_train_failure(self, iteration, error):
        self._finish(run_status(error))

    def close(self):
        self._finish("failed")  # only when neither end came (an error before the loop)

    def _finish(self, status: str) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.summary["status"] = status
            run.finish(exit_code=EXIT_CODES[status])
