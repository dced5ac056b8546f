"""DenseOutputs: what a dense detector predicts for a batch before any decoding.

``DenseDetector.dense_outputs(images)`` runs backbone -> neck -> head and lays out the anchors for the input's
size; training losses (``head.loss(outputs, targets)``), inference post-processing
(``head.predict(outputs)``) and analysis tools all start from this one object, so none of them rebuilds the
first half of the model. It is a NamedTuple of tensors, ints and None, so tracing, ``torch.jit.script`` and
``torch.export`` (which flatten named tuples) can carry it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor

__all__ = ["DenseOutputs"]


class DenseOutputs(NamedTuple):
    """The head's raw per-anchor outputs with the anchors they refer to (N anchors over all levels)."""
    pred_logits: Tensor               # (B, N, K) class logits (GFL: joint class-IoU score logits)
    pred_regression: Tensor           # (B, N, 4) box deltas (anchor heads), (B, N, 4, reg_max + 1) GFL side bins
    pred_quality: Optional[Tensor]    # (B, N) centerness / IoU logits of an anchor head's quality branch, or None
    anchors: Tensor                   # (N, 4) xyxy in input pixels, the levels concatenated in order
    num_anchors_per_level: list[int]  # anchors of each FPN level, summing to N
    image_size: tuple[int, int]       # (H, W) of the padded input batch
