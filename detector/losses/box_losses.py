"""Box regression losses: L1, smooth L1 and GIoU, elementwise over matched (prediction, target) pairs.

All return fp32 (fp64 kept) and reduce with ``reduce_loss`` ("none" | "sum" | "mean"; the mean of an
empty selection is 0, so a batch without positives gives a finite, zero box loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.boxes import generalized_box_iou_paired
from detector.losses.focal import reduce_loss

__all__ = ["l1_loss", "smooth_l1_loss", "giou_loss"]


def _promote(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_shapes(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape")


def l1_loss(pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
    """L1 loss on box deltas, as RetinaNet trains them in detectron2 / torchvision:

        L1(d, t) = |d - t|   elementwise over (..., 4)

    Args:
        pred: (..., 4) predicted deltas (or any matching shape); target: the same shape.
        reduction: "none" -> (..., 4), "sum" or "mean" -> scalar.
    """
    _check_shapes(pred, target)
    return reduce_loss(F.l1_loss(_promote(pred), _promote(target), reduction="none"), reduction)


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 0.11, reduction: str = "none") -> Tensor:
    """Smooth L1 (Huber-like) loss, Girshick, "Fast R-CNN" (ICCV 2015), eq. (3), with a transition ``beta``:

        x = d - t;   L(x) = 0.5 x^2 / beta   if |x| < beta,   |x| - 0.5 beta   otherwise

    beta = 0.11 is RetinaNet's setting (Lin et al. 2017, Detectron); beta = 0 falls back to L1, as in
    detectron2 (torch.nn.functional.smooth_l1_loss already implements this piecewise form and its limit).
    """
    _check_shapes(pred, target)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    pred, target = _promote(pred), _promote(target)
    if beta == 0.0:
        loss = F.l1_loss(pred, target, reduction="none")
    else:
        loss = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    return reduce_loss(loss, reduction)


def giou_loss(pred_boxes: Tensor, gt_boxes: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """GIoU loss, Rezatofighi et al., "Generalized Intersection over Union" (CVPR 2019), for paired boxes:

        IoU  = |P n G| / (|P u G| + eps)
        GIoU = IoU - (|C| - |P u G|) / (|C| + eps),   C the smallest box enclosing P and G
        L    = 1 - GIoU   in [0, 2]

    Args:
        pred_boxes: (..., 4) xyxy predicted boxes; gt_boxes: (..., 4) xyxy, box i paired with box i.
        reduction: "none" -> (...), "sum" or "mean" -> scalar.

    Same values as torchvision.ops.generalized_box_iou_loss (same eps placement); the paired GIoU is written
    in detector.boxes because its values are reused elsewhere and torchvision's loss indexes with a
    boolean mask (a host-device sync per call).
    """
    _check_shapes(pred_boxes, gt_boxes)
    return reduce_loss(1.0 - generalized_box_iou_paired(pred_boxes, gt_boxes, eps=eps), reduction)
