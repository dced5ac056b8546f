"""DenseDetector: backbone -> FPN -> dense head, with anchors per level.

Training: ``model(images, targets)`` returns a dict of scalar losses.
Inference: ``model(images)`` returns one dict per image with ``boxes`` (N, 4) xyxy in input pixels,
``scores`` (N,) and ``labels`` (N,) (contiguous 0-based class indices).
"""

from __future__ import annotations

from torch import Tensor, nn


class DenseDetector(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, anchor_generator: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator

    def forward(self, images: Tensor, targets: list[dict] | None = None):
        features = self.neck(self.backbone(images))
        outputs = self.head(features)  # a tuple of per-anchor predictions, head-specific
        anchors, num_anchors_per_level = self.anchor_generator(features, (images.shape[-2], images.shape[-1]))
        if self.training:
            if targets is None:
                raise ValueError("DenseDetector in training mode needs targets (a list of dicts with boxes, labels)")
            if len(targets) != images.shape[0]:
                raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
            return self.head.loss(outputs, anchors, num_anchors_per_level, targets)
        return self.head.predict(outputs, anchors, num_anchors_per_level, (images.shape[-2], images.shape[-1]))
