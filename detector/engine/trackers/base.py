"""The tracker interface: what a training run tells its experiment trackers, and the list that tells them all.

The trainer (main process only) calls, in this order::

    on_train_start(config, iteration)      the resolved config (plain data) and the first iteration (> 0: resumed)
    on_log_step(iteration, scalars)        every runtime.log_interval iterations: losses, lr, grad_norm, times
    on_evaluation(iteration, metrics, images, pr_curves)   after each evaluation (metrics: AP, AP50, ... floats)
    on_best(iteration, values)             with evaluation.save_best, after each evaluation: the best so far,
                                           already named ({"best/AP": 0.41, "best/iter": 2000})
    on_checkpoint(iteration, path)         after a checkpoint file was written
    on_train_end(iteration, metrics)       the run finished (metrics: the final evaluation's result, or empty)
  or on_train_failure(iteration, error)    the run stopped: a signal (TrainingInterrupted), divergence, an error
    close()                                always, last (idempotent)

Scalars arrive without a prefix (``loss``, ``lr``); a tracker names them ``train/<name>`` and evaluation
metrics ``val/<name>``, as metrics.jsonl and TensorBoard always have. ``images`` (uint8 (3, H, W) tensors of
detections drawn on val images) and ``pr_curves`` (per-class precision at 101 recall points) are computed only
when some tracker sets ``wants_images``.

A tracker's error during the run stops the run like any other error (last.pt of the last finished step is
written first); errors at the end or on closing are logged, and the other trackers still finish.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from detector.engine.stopping import TrainingInterrupted
from detector.engine.trackers.optional import TrackerStartError

__all__ = ["Tracker", "TrackerList", "TRAIN_PREFIX", "VAL_PREFIX", "prefixed", "run_status"]

logger = logging.getLogger("detector.engine")

TRAIN_PREFIX, VAL_PREFIX = "train", "val"


def prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"loss": 1.0}`` -> ``{"train/loss": 1.0}``."""
    return {f"{prefix}/{key}": value for key, value in values.items()}


def run_status(error: BaseException) -> str:
    """"interrupted" for a signal's stop (the run can be resumed), else "failed"."""
    return "interrupted" if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)) else "failed"


class Tracker:
    """One destination of a run's metrics. Every event is a no-op here: a tracker overrides those it records."""

    name = "tracker"
    wants_images = False  # whether on_evaluation should receive detections images and PR curves

    def on_train_start(self, config: Mapping[str, Any], iteration: int) -> None:
        pass

    def on_log_step(self, iteration: int, scalars: Mapping[str, float]) -> None:
        pass

    def on_evaluation(self, iteration: int, metrics: Mapping[str, float], images: Mapping[str, torch.Tensor],
                      pr_curves: Mapping[str, Sequence[float] | None]) -> None:
        pass

    def on_best(self, iteration: int, values: Mapping[str, float]) -> None:
        pass

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        pass

    def on_train_end(self, iteration: int, metrics: Mapping[str, float]) -> None:
        pass

    def on_train_failure(self, iteration: int, error: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


class TrackerList(Tracker):
    """Calls each tracker in list order. An empty list (processes other than the main one) does nothing.

    A tracker failing at its end or close does not keep the others from finishing: the error is logged and the
    others are still called."""

    name = "trackers"

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)
        self.closed = False

    @property
    def wants_images(self) -> bool:  # type: ignore[override]
        return any(tracker.wants_images for tracker in self.trackers)

    def on_train_start(self, config, iteration):
        """Raises TrackerStartError naming the tracker that could not start (before the first step)."""
        for tracker in self.trackers:
            try:
                tracker.on_train_start(config, iteration)
            except Exception as error:
                raise TrackerStartError(f"the {tracker.name} tracker (runtime.trackers) could not start its run: "
                                        f"{type(error).__name__}: {error}") from error

    def on_log_step(self, iteration, scalars):
        for tracker in self.trackers:
            tracker.on_log_step(iteration, scalars)

    def on_evaluation(self, iteration, metrics, images, pr_curves):
        for tracker in self.trackers:
            tracker.on_evaluation(iteration, metrics, images, pr_curves)

    def on_best(self, iteration, values):
        for tracker in self.trackers:
            tracker.on_best(iteration, values)

    def on_checkpoint(self, iteration, path):
        for tracker in self.trackers:
            tracker.on_checkpoint(iteration, path)

    def on_train_end(self, iteration, metrics):
        self._finish_each("on_train_end", iteration, metrics)

    def on_train_failure(self, iteration, error):
        self._finish_each("on_train_failure", iteration, error)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._finish_each("close")

    def _finish_each(self, event: str, *args) -> None:
        for tracker in self.trackers:
            try:
                getattr(tracker, event)(*args)
            except Exception as error:  # the run's own outcome is what gets reported
                logger.error("tracker %s: %s failed: %s: %s", tracker.name, event, type(error).__name__, error)
