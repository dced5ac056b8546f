"""Using a trained model: self-describing checkpoints (:mod:`.checkpoints`), the prediction API
(:class:`Detector`, :class:`Detections`), streaming batches (:mod:`.streaming`), publishing (:mod:`.publish`)."""

from detector.predict.predictor import Detector
from detector.predict.results import Detections

__all__ = ["Detector", "Detections"]
