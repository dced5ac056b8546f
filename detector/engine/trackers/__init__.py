"""Experiment trackers: TensorBoard, metrics.jsonl, Weights & Biases and MLflow behind one callback interface.

:mod:`.base` defines the events a training run sends (:class:`Tracker`) and the list that forwards them
(:class:`TrackerList`); :func:`build_trackers` makes the list ``runtime.trackers`` asks for. W&B and MLflow are
optional extras, imported only when chosen.
"""

from detector.engine.trackers.base import Tracker, TrackerList
from detector.engine.trackers.build import build_trackers
from detector.engine.trackers.optional import TrackerStartError, TrackerUnavailableError

__all__ = ["Tracker", "TrackerList", "build_trackers", "TrackerUnavailableError", "TrackerStartError"]
