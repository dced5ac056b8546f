"""The module an export traces: a dense detector from a normalised, padded batch to fixed-layout detections.

Inputs:
    images       (B, 3, H, W) float32: RGB scaled to [0, 1], normalised by ``data.mean`` / ``data.std``, each image
                 resized by the test rule (shorter side ``data.test_min_size``, longer at most ``test_max_size``)
                 and padded with zeros at the bottom and right to the batch's H x W;
    image_sizes  (B, 2) int64: each image's (h, w) after the resize, before the padding: boxes are clipped to it
                 before NMS, as in the eager model.
Outputs (D = ``model.test.max_dets``):
    boxes (B, D, 4) float32 xyxy in the input's pixels, scores (B, D) float32, labels (B, D) int64 (contiguous class
    indices, -1 in empty slots), num_detections (B,) int64: image b's detections are its first num_detections[b]
    slots, by decreasing score.

The forward pass is ``model.dense_outputs(images)`` then ``model.head.detect(...)``: the very code the eager
model's ``predict`` runs (detector.models.postprocess), traced. The anchors are generated in the graph from the
feature maps' shapes, so a graph exported with dynamic axes serves any input size.
"""

from __future__ import annotations

from torch import Tensor, nn

from detector.models.detector import DenseDetector

__all__ = ["ExportableDetector", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")


class ExportableDetector(nn.Module):
    """``forward(images (B, 3, H, W), image_sizes (B, 2)) -> (boxes, scores, labels, num_detections)``."""

    def __init__(self, model: DenseDetector):
        super().__init__()
        self.model = model
        self.eval()  # the exporters restore the wrapper's mode afterwards, which would otherwise be training

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        detections = self.model.head.detect(self.model.dense_outputs(images), image_sizes)
        return detections.boxes, detections.scores, detections.labels, detections.num_detections
