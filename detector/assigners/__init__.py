"""Anchor-to-ground-truth assigners shared by every head.

Codes per anchor (torchvision's Matcher convention): gt index >= 0 positive, ``BACKGROUND`` (-1),
``IGNORE`` (-2). Every assigner has the batched signature of :mod:`detector.assigners.base`.
"""

from detector.assigners.atss import ATSSAssigner
from detector.assigners.base import BACKGROUND, IGNORE, PaddedTargets, assign_targets, pad_targets
from detector.assigners.max_iou import MaxIoUAssigner

__all__ = ["BACKGROUND", "IGNORE", "ATSSAssigner", "MaxIoUAssigner", "PaddedTargets", "assign_targets",
           "pad_targets"]
