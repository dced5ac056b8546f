"""The two local trackers: TensorBoard event files (``<work_dir>/tb``) and ``<work_dir>/metrics.jsonl``.

Both write through :class:`detector.runtime.metrics_log.MetricsLogger` (one file kind each), so their files are
those the trainer always wrote: ``{"iter": 20, "train/loss": ..., ...}`` per log step, ``{"iter": N, "val/AP":
...}`` per evaluation and, with ``evaluation.save_best``, ``{"iter": N, "best/AP": ..., "best/iter": M}`` after
it; TensorBoard scalars under the same names, plus detections images and PR curves.
"""

from __future__ import annotations

from pathlib import Path

from detector.engine.trackers.base import TRAIN_PREFIX, VAL_PREFIX, Tracker
from detector.runtime.metrics_log import MetricsLogger

__all__ = ["TensorBoardTracker", "JsonlTracker"]


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, work_dir: Path):
        self.log = MetricsLogger(work_dir, jsonl=False)

    @property
    def wants_images(self) -> bool:  # type: ignore[override]
        return self.log.has_tensorboard  # False when the tensorboard package is missing (warned)

    def on_log_step(self, iteration, scalars):
        self.log.log(iteration, scalars, prefix=TRAIN_PREFIX)

    def on_evaluation(self, iteration, metrics, images, pr_curves):
        self.log.log_images(iteration, images)
        self.log.log_pr_curves(iteration, pr_curves)
        self.log.log(iteration, metrics, prefix=VAL_PREFIX)

    def on_best(self, iteration, values):
        self.log.log(iteration, values, prefix=None)

    def close(self):
        self.log.close()


class JsonlTracker(Tracker):
    name = "jsonl"

    def __init__(self, work_dir: Path):
        self.log = MetricsLogger(work_dir, tensorboard=False)

    def on_log_step(self, iteration, scalars):
        self.log.log(iteration, scalars, prefix=TRAIN_PREFIX)

    def on_evaluation(self, iteration, metrics, images, pr_curves):
        self.log.log(iteration, metrics, prefix=VAL_PREFIX)

    def on_best(self, iteration, values):
        self.log.log(iteration, values, prefix=None)

    def close(self):
        self.log.close()
