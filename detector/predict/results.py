"""Detections: what :meth:`detector.Detector.predict` returns for one input image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.evaluation.results import detections_to_coco_results

__all__ = ["Detections"]


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first, in the input image's own pixels (after its EXIF orientation).

    Attributes:
        boxes: (N, 4) float32 xyxy, clipped to the image.
        scores: (N,) float32.
        labels: (N,) int64, contiguous class indices 0..K-1.
        class_names: N names, one per detection.
        category_ids: N category ids, as in the annotations the model was trained on.
        image_size: (height, width) of the input image.
        source: the input's path, or a description of an in-memory image.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str]
    category_ids: list[int]
    image_size: tuple[int, int]
    source: str = ""

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_dict(self) -> dict:
        """Plain Python data (JSON-ready): ``boxes`` [[x1, y1, x2, y2], ...], ``scores``, ``labels``,
        ``class_names``, ``category_ids``, ``image_size`` [h, w], ``source``."""
        return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "labels": self.labels.tolist(),
                "class_names": list(self.class_names), "category_ids": list(self.category_ids),
                "image_size": list(self.image_size), "source": self.source}

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO results entries ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` for ``image_id``
        (what ``tools/eval.py --results`` scores), boxes rounded as the evaluation writes them."""
        # detection i carries its own category id: label it i and map i -> category_ids[i]
        detections = {"boxes": self.boxes, "scores": self.scores, "labels": torch.arange(len(self))}
        return detections_to_coco_results([detections], [int(image_id)], self.category_ids)

    def above(self, score_thr: float) -> "Detections":
        """The detections scoring at least ``score_thr``."""
        keep = self.scores >= score_thr  # (N,)
        indices = torch.nonzero(keep).flatten().tolist()
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep],
                          [self.class_names[i] for i in indices], [self.category_ids[i] for i in indices],
                          self.image_size, self.source)
