"""Loss objects the dense heads hold: a loss function with its parameters bound, plus what the head must know.

A classification loss tells whether it is trained on soft targets (``soft_targets``: the IoU of the decoded box
with its ground truth at the positive's class, as Quality Focal Loss; otherwise one-hot targets). A box loss
tells whether it compares decoded boxes (``on_boxes``: GIoU) or box deltas (L1, smooth L1). Both are called as
``loss(pred, target, reduction="none")``. The functional losses are frozen dataclasses (no state); the
Equalized Focal Losses (``efl.py``), whose gradient statistics are state, are ``nn.Module``s with the same
interface. ``detector.models.build`` maps config names to these constructors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import Tensor

from detector.losses.box_losses import giou_loss, l1_loss, smooth_l1_loss
from detector.losses.focal import focal_loss
from detector.losses.focal_star import focal_loss_star
from detector.losses.quality_focal import quality_focal_loss

__all__ = ["ClassificationLoss", "BoxLoss", "FocalLoss", "FocalLossStar", "QualityFocalLoss", "L1Loss",
           "SmoothL1Loss", "GIoULoss"]


class ClassificationLoss(Protocol):
    """``loss(logits (..., K), targets (..., K), reduction)``; ``soft_targets``: IoU-valued targets (else one-hot)."""
    soft_targets: bool

    def __call__(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        ...


class BoxLoss(Protocol):
    """``loss(pred (P, 4), target (P, 4), reduction)``; ``on_boxes``: decoded xyxy boxes (else box deltas)."""
    on_boxes: bool

    def __call__(self, pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        ...


@dataclass(frozen=True)
class FocalLoss:
    """Focal loss FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t) (Lin et al. 2017) on one-hot targets."""
    alpha: float = 0.25
    gamma: float = 2.0
    soft_targets: ClassVar[bool] = False

    def __call__(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        return focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction=reduction)


@dataclass(frozen=True)
class FocalLossStar:
    """FL* = -log(sigmoid(gamma x_t + beta)) / gamma (Lin et al. 2017, appendix A) on one-hot targets."""
    gamma: float = 2.0
    beta: float = 1.0
    soft_targets: ClassVar[bool] = False

    def __call__(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        return focal_loss_star(logits, targets, gamma=self.gamma, beta=self.beta, reduction=reduction)


@dataclass(frozen=True)
class QualityFocalLoss:
    """QFL(sigma) = -|y - sigma|^beta ((1 - y) log(1 - sigma) + y log(sigma)) (Li et al. 2020) on IoU targets y."""
    beta: float = 2.0
    soft_targets: ClassVar[bool] = True

    def __call__(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        return quality_focal_loss(logits, targets, beta=self.beta, reduction=reduction)


@dataclass(frozen=True)
class L1Loss:
    """|d - t| on box deltas (d predicted, t the encoded ground truth), per coordinate."""
    on_boxes: ClassVar[bool] = False

    def __call__(self, pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        return l1_loss(pred, target, reduction=reduction)


@dataclass(frozen=True)
class SmoothL1Loss:
    """Smooth L1 on box deltas (Girshick 2015): with x = d - t, 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta."""
    beta: float = 0.11
    on_boxes: ClassVar[bool] = False

    def __call__(self, pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        return smooth_l1_loss(pred, target, beta=self.beta, reduction=reduction)


@dataclass(frozen=True)
class GIoULoss:
    """1 - GIoU(P, G) on decoded xyxy boxes (Rezatofighi et al. 2019), one value per box pair."""
    on_boxes: ClassVar[bool] = True

    def __call__(self, pred: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        return giou_loss(pred, target, reduction=reduction)
