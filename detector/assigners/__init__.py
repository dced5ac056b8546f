"""Anchor-to-ground-truth assigners shared by every head.

Codes per anchor (torchvision's Matcher convention): gt index >= 0 positive, ``BACKGROUND`` (-1),
``IGNORE`` (-2).
"""

from detector.assigners.atss import ATSSAssigner
from detector.assigners.max_iou import BACKGROUND, IGNORE, MaxIoUAssigner

__all__ = ["BACKGROUND", "IGNORE", "ATSSAssigner", "MaxIoUAssigner"]
