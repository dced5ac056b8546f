"""Models: backbones, necks, dense heads, anchors, post-processing and build_model."""

from detector.models.build import build_model
from detector.models.detector import DenseDetector
from detector.models.outputs import DenseOutputs

__all__ = ["build_model", "DenseDetector", "DenseOutputs"]
