"""Models: backbones, necks, dense heads, anchors, post-processing and build_model."""

from detector.models.build import build_model
from detector.models.detector import DenseDetector

__all__ = ["build_model", "DenseDetector"]
