"""build_model(cfg): the one place where the config meets the constructors.

Every choice a config names is looked up in a plain dict below; model classes take explicit arguments.
"""

from __future__ import annotations

import logging

from torch import nn

from detector.assigners import ATSSAssigner, MaxIoUAssigner
from detector.boxes import DeltaBoxCoder
from detector.config_schema import ClsLossConfig, Config, ModelConfig
from detector.losses import (BoxLoss, ClassificationLoss, EqualizedFocalLoss, EqualizedQualityFocalLoss, FocalLoss,
                             FocalLossStar, GIoULoss, L1Loss, QualityFocalLoss, SmoothL1Loss)
from detector.models.anchors import AnchorGenerator, level_strides
from detector.models.backbones.resnet import ResNetBackbone
from detector.models.detector import DenseDetector
from detector.models.heads.anchor_head import AnchorHead
from detector.models.heads.base import LossWeights
from detector.models.heads.common import TowerSpec
from detector.models.heads.gfl_head import GFLHead
from detector.models.necks.fpn import FPN
from detector.models.postprocess import InferenceParams
from detector.runtime.checkpoint import CheckpointError
from detector.runtime.model_state import load_model_checkpoint

logger = logging.getLogger("detector.models")


def _equalized_focal(c: ClsLossConfig, num_classes: int, joint_quality: bool) -> nn.Module:
    """EFL; in its quality form on a head whose class score is a joint class-quality score (GFL)."""
    loss = EqualizedQualityFocalLoss if joint_quality else EqualizedFocalLoss
    return loss(num_classes, gamma_b=c.gamma, scale=c.scale, alpha=c.alpha)


# Config name -> classification-loss object: (loss_cls section, number of classes, joint class-quality head).
CLS_LOSSES = {
    "focal": lambda c, num_classes, joint_quality: FocalLoss(alpha=c.alpha, gamma=c.gamma),
    "focal_star": lambda c, num_classes, joint_quality: FocalLossStar(gamma=c.gamma, beta=c.focal_star_beta),
    "quality_focal": lambda c, num_classes, joint_quality: QualityFocalLoss(beta=c.quality_focal_beta),
    "equalized_focal": _equalized_focal,
}
# Config name -> box-loss object (loss_box section); dfl+giou is GIoU plus the GFL head's own DFL term.
BOX_LOSSES = {
    "l1": lambda c: L1Loss(),
    "smooth_l1": lambda c: SmoothL1Loss(beta=c.beta),
    "giou": lambda c: GIoULoss(),
    "dfl+giou": lambda c: GIoULoss(),
}
ASSIGNERS = {
    "max_iou": lambda c: MaxIoUAssigner(pos_iou_thr=c.pos_iou_thr, neg_iou_thr=c.neg_iou_thr,
                                        allow_low_quality_matches=c.allow_low_quality_matches,
                                        ignore_iof_thr=c.ignore_iof_thr),
    "atss": lambda c: ATSSAssigner(topk=c.topk, ignore_iof_thr=c.ignore_iof_thr),
}


def build_cls_loss(m: ModelConfig) -> ClassificationLoss:
    return CLS_LOSSES[m.loss_cls.type](m.loss_cls, m.num_classes, m.type == "gfl")


def build_box_loss(m: ModelConfig) -> BoxLoss:
    return BOX_LOSSES[m.loss_box.type](m.loss_box)


def _tower(m: ModelConfig, in_channels: int) -> TowerSpec:
    return TowerSpec(in_channels=in_channels, feat_channels=m.head.feat_channels, num_convs=m.head.num_convs,
                     norm=m.head.norm)


def _inference(m: ModelConfig) -> InferenceParams:
    t = m.test
    return InferenceParams(score_thr=t.score_thr, topk_per_level=t.topk_per_level, nms_iou=t.nms_iou,
                           max_dets=t.max_dets, score_thr_on=t.score_thr_on, quality_fusion=t.quality_fusion,
                           topk_capped_at_anchors=t.topk_capped_at_anchors)


def _anchor_head(m: ModelConfig, in_channels: int, num_anchors: int, num_levels: int) -> AnchorHead:
    return AnchorHead(
        num_classes=m.num_classes, num_anchors=num_anchors, num_levels=num_levels, tower=_tower(m, in_channels),
        assigner=ASSIGNERS[m.assigner.type](m.assigner),
        box_coder=DeltaBoxCoder(weights=tuple(m.box_coder.weights), clamp=m.box_coder.clamp),
        cls_loss=build_cls_loss(m), box_loss=build_box_loss(m), prior_prob=m.head.prior_prob,
        quality_branch=m.head.quality_branch, box_weighting=m.loss_box.weighting,
        scale_per_level=m.head.scale_per_level,
        loss_weights=LossWeights(cls=m.loss_cls.weight, box=m.loss_box.weight, quality=m.head.quality_loss_weight),
        inference=_inference(m))


def _gfl_head(m: ModelConfig, in_channels: int, strides: list[int]) -> GFLHead:
    return GFLHead(
        num_classes=m.num_classes, strides=strides, tower=_tower(m, in_channels),
        assigner=ASSIGNERS[m.assigner.type](m.assigner), cls_loss=build_cls_loss(m), box_loss=build_box_loss(m),
        use_dfl=m.loss_box.type == "dfl+giou", reg_max=m.head.reg_max, prior_prob=m.head.prior_prob,
        loss_weights=LossWeights(cls=m.loss_cls.weight, box=m.loss_box.weight, dfl=m.loss_box.dfl_weight),
        inference=_inference(m))


def build_model(cfg: Config | ModelConfig) -> nn.Module:
    """Build the detector a config describes (accepts the whole Config or its ``model`` section)."""
    m = cfg.model if isinstance(cfg, Config) else cfg
    if not isinstance(m.num_classes, int):  # "auto" left unresolved: a config built in code, not loaded
        raise ValueError("model.num_classes is 'auto': load the config with detector.config.load_config (or "
                         "config_from_dict), which reads the class count from data.train.ann_file, before building")
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
