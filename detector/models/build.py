"""build_model(cfg): the one place where the config meets the constructors.

Every choice a config names is looked up in a plain dict below; model classes take explicit arguments.
"""

from __future__ import annotations

import logging
from functools import partial

from torch import Tensor, nn

from detector.assigners import ATSSAssigner, MaxIoUAssigner
from detector.boxes import DeltaBoxCoder
from detector.config_schema import ClsLossConfig, Config, ModelConfig
from detector.engine.checkpoint import CheckpointError, load_model_checkpoint
from detector.losses import (EqualizedFocalLoss, focal_loss, focal_loss_star, giou_loss, l1_loss,
                             quality_focal_loss, smooth_l1_loss)
from detector.models.anchors import AnchorGenerator, level_strides
from detector.models.backbones.resnet import ResNetBackbone
from detector.models.detector import DenseDetector
from detector.models.heads.anchor_head import AnchorHead
from detector.models.heads.gfl_head import GFLHead
from detector.models.necks.fpn import FPN

logger = logging.getLogger("detector.models")


class EqualizedQualityFocalLoss(nn.Module):
    """EFL in its quality-focal form (GFL head); a module so the statistics travel in the state dict."""

    def __init__(self, efl: EqualizedFocalLoss):
        super().__init__()
        self.efl = efl

    def forward(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        return self.efl.quality_forward(logits, targets, reduction=reduction)


def build_cls_loss(c: ClsLossConfig, num_classes: int, joint_quality_head: bool):
    """(loss callable, whether it is trained on IoU-valued soft targets)."""
    if c.type == "focal":
        return partial(focal_loss, alpha=c.alpha, gamma=c.gamma), False
    if c.type == "focal_star":
        return partial(focal_loss_star, gamma=c.gamma, beta=1.0 if c.beta is None else c.beta), False
    if c.type == "quality_focal":
        return partial(quality_focal_loss, beta=2.0 if c.beta is None else c.beta), True
    efl = EqualizedFocalLoss(num_classes, gamma_b=c.gamma, scale=c.scale, alpha=c.alpha)
    return (EqualizedQualityFocalLoss(efl), True) if joint_quality_head else (efl, False)


# Box losses: (function, compares decoded boxes instead of deltas)
BOX_LOSSES = {
    "l1": lambda c: (l1_loss, False),
    "smooth_l1": lambda c: (partial(smooth_l1_loss, beta=c.beta), False),
    "giou": lambda c: (giou_loss, True),
    "dfl+giou": lambda c: (giou_loss, True),
}
ASSIGNERS = {
    "max_iou": lambda c: MaxIoUAssigner(pos_iou_thr=c.pos_iou_thr, neg_iou_thr=c.neg_iou_thr,
                                        allow_low_quality_matches=c.allow_low_quality_matches,
                                        ignore_iof_thr=c.ignore_iof_thr),
    "atss": lambda c: ATSSAssigner(topk=c.topk, ignore_iof_thr=c.ignore_iof_thr),
}


def _anchor_head(m: ModelConfig, in_channels: int, num_anchors: int, num_levels: int) -> AnchorHead:
    cls_loss, soft = build_cls_loss(m.loss_cls, m.num_classes, joint_quality_head=False)
    box_loss, on_boxes = BOX_LOSSES[m.loss_box.type](m.loss_box)
    h = m.head
    return AnchorHead(
        num_classes=m.num_classes, in_channels=in_channels, num_anchors=num_anchors, num_levels=num_levels,
        assigner=ASSIGNERS[m.assigner.type](m.assigner),
        box_coder=DeltaBoxCoder(weights=tuple(m.box_coder.weights), clamp=m.box_coder.clamp),
        cls_loss=cls_loss, soft_cls_targets=soft, box_loss=box_loss, box_loss_on_boxes=on_boxes,
        num_convs=h.num_convs, feat_channels=h.feat_channels, norm=h.norm, prior_prob=h.prior_prob,
        quality_branch=h.quality_branch, scale_per_level=h.scale_per_level, cls_loss_weight=m.loss_cls.weight,
        box_loss_weight=m.loss_box.weight, quality_loss_weight=h.quality_loss_weight, score_thr=m.test.score_thr,
        topk_per_level=m.test.topk_per_level, nms_iou=m.test.nms_iou, max_dets=m.test.max_dets)


def _gfl_head(m: ModelConfig, in_channels: int, strides: list[int]) -> GFLHead:
    cls_loss, soft = build_cls_loss(m.loss_cls, m.num_classes, joint_quality_head=True)
    h = m.head
    return GFLHead(
        num_classes=m.num_classes, in_channels=in_channels, strides=strides,
        assigner=ASSIGNERS[m.assigner.type](m.assigner), cls_loss=cls_loss, soft_cls_targets=soft,
        box_loss=giou_loss, use_dfl=m.loss_box.type == "dfl+giou", reg_max=h.reg_max, num_convs=h.num_convs,
        feat_channels=h.feat_channels, norm=h.norm, prior_prob=h.prior_prob, cls_loss_weight=m.loss_cls.weight,
        box_loss_weight=m.loss_box.weight, dfl_loss_weight=m.loss_box.dfl_weight, score_thr=m.test.score_thr,
        topk_per_level=m.test.topk_per_level, nms_iou=m.test.nms_iou, max_dets=m.test.max_dets)


def build_model(cfg: Config | ModelConfig) -> nn.Module:
    """Build the detector a config describes (accepts the whole Config or its ``model`` section)."""
    m = cfg.model if isinstance(cfg, Config) else cfg
    backbone = ResNetBackbone(depth=m.backbone.depth, weights=m.backbone.weights, norm=m.backbone.norm,
                              frozen_stages=m.backbone.frozen_stages)
    neck = FPN(backbone.out_channels, out_channels=m.neck.out_channels, p6_from=m.neck.p6_from, norm=m.neck.norm,
               relu_before_p7=m.neck.relu_before_p7)
    strides = level_strides(3, 7)
    a = m.anchors
    anchors = AnchorGenerator(strides, a.sizes, a.scales, a.ratios, offset=a.offset, sizes_per_level=a.sizes_per_level,
                              strides_from_input=a.strides_from_input)
    if m.type == "gfl":
        head = _gfl_head(m, neck.out_channels, strides)
    else:
        head = _anchor_head(m, neck.out_channels, anchors.num_anchors_per_location, len(strides))
    model = DenseDetector(backbone, neck, head, anchors)
    if m.init_checkpoint:
        load_init_checkpoint(model, m.init_checkpoint)
    return model


def load_init_checkpoint(model: nn.Module, path: str) -> None:
    """Initialise ``model`` from the model weights of a focaldet checkpoint (``model.init_checkpoint``).

    Every key must match (another architecture is an error naming the keys); entries of another shape,
    such as the classifier of a checkpoint trained for another class count, keep their initialisation."""
    result = load_model_checkpoint(model, path, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"model.init_checkpoint {path} does not fit this model: missing keys "
                              f"{result.missing_keys[:20]}, unexpected keys {result.unexpected_keys[:20]} (another "
                              "model.type, backbone depth, neck or head?)")
    if result.shape_mismatches:
        logger.warning("model.init_checkpoint %s: %d entries of another shape keep their initialisation: %s", path,
                       len(result.shape_mismatches), ", ".join(key for key, _, _ in result.shape_mismatches))
    else:
        logger.info("model initialised from %s", path)
