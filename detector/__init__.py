"""focaldet: dense one-stage detectors and the Focal Loss family."""

__version__ = "0.1.0"
