"""focaldet: dense one-stage detectors and the Focal Loss family.

``from detector import Detector`` gives the prediction API (:class:`detector.predict.Detector`). It is imported
on first use, so ``import detector`` stays light (no torch, torchvision or model code until then).
"""

from detector.version import __version__

__all__ = ["Detector", "__version__"]


def __getattr__(name: str):
    if name == "Detector":
        from detector.predict.predictor import Detector
        return Detector
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
