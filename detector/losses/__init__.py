"""Loss functions (pure functions; nn.Modules only where state is needed) and the loss objects heads hold."""

from detector.losses.box_losses import giou_loss, l1_loss, smooth_l1_loss
from detector.losses.distribution_focal import distribution_focal_loss, integral_distribution
from detector.losses.efl import EqualizedFocalLoss, EqualizedQualityFocalLoss
from detector.losses.focal import focal_loss, reduce_loss
from detector.losses.focal_star import focal_loss_star
from detector.losses.loss_objects import (BoxLoss, ClassificationLoss, FocalLoss, FocalLossStar, GIoULoss, L1Loss,
                                          QualityFocalLoss, SmoothL1Loss)
from detector.losses.quality_focal import quality_focal_loss

__all__ = [
    "focal_loss",
    "reduce_loss",
    "l1_loss",
    "smooth_l1_loss",
    "giou_loss",
    "focal_loss_star",
    "quality_focal_loss",
    "distribution_focal_loss",
    "integral_distribution",
    "EqualizedFocalLoss",
    "EqualizedQualityFocalLoss",
    "ClassificationLoss",
    "BoxLoss",
    "FocalLoss",
    "FocalLossStar",
    "QualityFocalLoss",
    "L1Loss",
    "SmoothL1Loss",
    "GIoULoss",
]
