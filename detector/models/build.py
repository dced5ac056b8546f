"""build_model(cfg): the one place where the config meets the constructors.

Every choice a config names is looked up in a plain dict below; model classes take explicit arguments.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from detector.assigners import MaxIoUAssigner
from detector.boxes import DeltaBoxCoder
from detector.config_schema import Config, ModelConfig
from detector.losses import focal_loss, giou_loss, l1_loss, smooth_l1_loss
from detector.models.anchors import AnchorGenerator, level_strides
from detector.models.backbones.resnet import ResNetBackbone
from detector.models.detector import DenseDetector
from detector.models.heads.retinanet_head import RetinaNetHead
from detector.models.necks.fpn import FPN

# Box losses: (function, compares decoded boxes instead of deltas)
BOX_LOSSES = {
    "l1": lambda c: (l1_loss, False),
    "smooth_l1": lambda c: (partial(smooth_l1_loss, beta=c.beta), False),
    "giou": lambda c: (giou_loss, True),
}
CLS_LOSSES = {
    "focal": lambda c: partial(focal_loss, alpha=c.alpha, gamma=c.gamma),
}
ASSIGNERS = {
    "max_iou": lambda c: MaxIoUAssigner(pos_iou_thr=c.pos_iou_thr, neg_iou_thr=c.neg_iou_thr,
                                        allow_low_quality_matches=c.allow_low_quality_matches,
                                        ignore_iof_thr=c.ignore_iof_thr),
}


def _build_retinanet(m: ModelConfig) -> DenseDetector:
    backbone = ResNetBackbone(depth=m.backbone.depth, weights=m.backbone.weights, norm=m.backbone.norm,
                              frozen_stages=m.backbone.frozen_stages)
    neck = FPN(backbone.out_channels, out_channels=m.neck.out_channels, p6_from=m.neck.p6_from, norm=m.neck.norm)
    anchors = AnchorGenerator(level_strides(3, 7), m.anchors.sizes, m.anchors.scales, m.anchors.ratios)
    box_loss, on_boxes = BOX_LOSSES[m.loss_box.type](m.loss_box)
    head = RetinaNetHead(
        num_classes=m.num_classes, in_channels=neck.out_channels, num_anchors=anchors.num_anchors_per_location,
        assigner=ASSIGNERS[m.assigner.type](m.assigner),
        box_coder=DeltaBoxCoder(weights=tuple(m.box_coder.weights), clamp=m.box_coder.clamp),
        cls_loss=CLS_LOSSES[m.loss_cls.type](m.loss_cls), box_loss=box_loss, box_loss_on_boxes=on_boxes,
        num_convs=m.head.num_convs, feat_channels=m.head.feat_channels, norm=m.head.norm,
        prior_prob=m.head.prior_prob, cls_loss_weight=m.loss_cls.weight, box_loss_weight=m.loss_box.weight,
        score_thr=m.test.score_thr, topk_per_level=m.test.topk_per_level, nms_iou=m.test.nms_iou,
        max_dets=m.test.max_dets)
    return DenseDetector(backbone, neck, head, anchors)


DETECTORS = {"retinanet": _build_retinanet}


def build_model(cfg: Config | ModelConfig) -> nn.Module:
    """Build the detector a config describes (accepts the whole Config or its ``model`` section)."""
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    return DETECTORS[model_cfg.type](model_cfg)
