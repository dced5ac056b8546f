"""The ``model`` section of the config schema: backbone, neck, anchors, head, assigner, losses, box coder and
inference settings (see :mod:`detector.config_schema` for the whole config).

Defaults follow the RetinaNet paper's R50-FPN 1x COCO setting (see README "Config reference").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union


@dataclass(frozen=True)
class BackboneConfig:
    depth: Literal[18, 34, 50, 101] = 50
    # A torchvision weight name ("ResNet50_Weights.IMAGENET1K_V1"), a local .pth file, or null (random init).
    weights: Optional[str] = None
    norm: Literal["frozen_bn", "bn", "syncbn", "gn"] = "frozen_bn"
    # 0: nothing frozen; 1: stem; 2: stem + layer1 (the paper and detectron2's FREEZE_AT=2); up to 5.
    frozen_stages: int = 2

    def __post_init__(self):
        if not 0 <= self.frozen_stages <= 5:
            raise ValueError(f"backbone.frozen_stages must be in 0..5, got {self.frozen_stages}")


@dataclass(frozen=True)
class NeckConfig:
    out_channels: int = 256
    # P6 from the backbone's C5 (RetinaNet paper, torchvision v2), from P5 (torchvision v1, FCOS, GFL) or from
    # lateral_p5, the 1x1 lateral of C5 before P5's 3x3 conv (the official EFL code's FPN).
    p6_from: Literal["c5", "p5", "lateral_p5"] = "c5"
    norm: Optional[Literal["gn"]] = None
    relu_before_p7: bool = True  # P7 = conv(relu(P6)); false: conv(P6) (the official EFL code)


@dataclass(frozen=True)
class AnchorConfig:
    # Base anchor size per FPN level P3..P7 (strides 8..128).
    sizes: list[float] = field(default_factory=lambda: [32.0, 64.0, 128.0, 256.0, 512.0])
    scales: list[float] = field(default_factory=lambda: [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width
    # Anchor centres at (x + offset) * stride: 0 puts them on the cell corner (torchvision, mmdetection).
    offset: float = 0.0
    # Exact anchor sizes per level (5 lists of equal length), replacing sizes x scales; e.g. torchvision's
    # RetinaNet rounds them down to integers: [[32, 40, 50], [64, 80, 101], ...]. null: sizes x scales.
    sizes_per_level: Optional[list[list[float]]] = None
    # Grid step of each level: false, its stride 2^l; true, input size // feature size per axis (torchvision's
    # AnchorGenerator rule; it differs from 2^l at P6/P7 when the padded input is not a multiple of 128).
    strides_from_input: bool = False

    def __post_init__(self):
        if len(self.sizes) != 5:
            raise ValueError(f"anchors.sizes needs one size per level P3..P7 (5), got {self.sizes}")
        if not self.scales or not self.ratios or min(self.scales + self.ratios + self.sizes) <= 0:
            raise ValueError("anchors.scales, ratios and sizes must be non-empty and positive")
        if self.sizes_per_level is not None:
            lengths = {len(level) for level in self.sizes_per_level}
            if len(self.sizes_per_level) != 5 or len(lengths) != 1 or 0 in lengths:
                raise ValueError("anchors.sizes_per_level needs 5 non-empty lists of equal length (levels P3..P7), "
                                 f"got {self.sizes_per_level}")
            if min(min(level) for level in self.sizes_per_level) <= 0:
                raise ValueError(f"anchors.sizes_per_level must be positive, got {self.sizes_per_level}")


@dataclass(frozen=True)
class HeadConfig:
    num_convs: int = 4
    feat_channels: int = 256
    norm: Optional[Literal["gn"]] = None
    prior_prob: float = 0.01
    # Anchor heads: an extra per-anchor branch trained with BCE (ATSS: centerness; EFL baseline: IoU).
    quality_branch: Optional[Literal["centerness", "iou"]] = None
    quality_loss_weight: float = 1.0
    scale_per_level: bool = False  # a learnable scalar per level on the box output (ATSS; GFL always)
    reg_max: int = 16              # GFL: distribution bins per side are 0..reg_max

    def __post_init__(self):
        if not 0.0 < self.prior_prob < 1.0:
            raise ValueError(f"head.prior_prob must be in (0, 1), got {self.prior_prob}")
        if self.num_convs < 0 or self.feat_channels <= 0:
            raise ValueError("head.num_convs must be >= 0 and head.feat_channels > 0")
        if self.norm == "gn" and self.feat_channels % 32:
            raise ValueError(f"head.norm gn uses 32 groups: head.feat_channels ({self.feat_channels}) must be a "
                             "multiple of 32")
        if self.reg_max < 1:
            raise ValueError(f"head.reg_max must be >= 1, got {self.reg_max}")


@dataclass(frozen=True)
class AssignerConfig:
    type: Literal["max_iou", "atss"] = "max_iou"
    topk: int = 9  # ATSS: candidates per level and ground truth (all anchors of a location count)
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    allow_low_quality_matches: bool = True
    ignore_iof_thr: float = 0.5  # background anchors covered this much by a crowd box are ignored

    def __post_init__(self):
        if not 0.0 <= self.neg_iou_thr <= self.pos_iou_thr <= 1.0:
            raise ValueError("assigner needs 0 <= neg_iou_thr <= pos_iou_thr <= 1, got "
                             f"{self.neg_iou_thr} and {self.pos_iou_thr}")
        if self.topk < 1:
            raise ValueError(f"assigner.topk must be >= 1, got {self.topk}")


@dataclass(frozen=True)
class ClsLossConfig:
    """focal: FL(alpha, gamma); focal_star: FL*(gamma, focal_star_beta); quality_focal: QFL(quality_focal_beta)
    on IoU targets; equalized_focal: EFL(alpha, gamma_b = gamma, s = scale), in its quality form on the GFL head."""
    type: Literal["focal", "focal_star", "quality_focal", "equalized_focal"] = "focal"
    alpha: float = 0.25  # < 0 disables the alpha weighting
    gamma: float = 2.0
    focal_star_beta: float = 1.0     # FL*: the shift beta in -log(sigmoid(gamma x_t + beta)) / gamma
    quality_focal_beta: float = 2.0  # QFL: the exponent beta in |y - sigma|^beta
    # The single key of older configs: the beta of the chosen type (focal_star or quality_focal). When set, it
    # is moved into focal_star_beta / quality_focal_beta as the type says and becomes null.
    beta: Optional[float] = None
    scale: float = 8.0  # EFL: s in gamma_j = gamma_b + s (1 - g_j)
    weight: float = 1.0

    def __post_init__(self):
        if self.gamma < 0 or self.weight < 0 or self.scale < 0:
            raise ValueError("loss_cls.gamma, loss_cls.scale and loss_cls.weight must be >= 0")
        if self.type == "focal_star" and self.gamma <= 0:
            raise ValueError("loss_cls.type focal_star divides by gamma: loss_cls.gamma must be > 0")
        if self.alpha > 1:
            raise ValueError(f"loss_cls.alpha must be <= 1 (< 0 disables it), got {self.alpha}")
        if self.beta is not None:  # (frozen dataclass: fields are set through object.__setattr__)
            if self.type == "focal_star":
                object.__setattr__(self, "focal_star_beta", float(self.beta))
            elif self.type == "quality_focal":
                object.__setattr__(self, "quality_focal_beta", float(self.beta))
            object.__setattr__(self, "beta", None)  # one meaning per key from here on


@dataclass(frozen=True)
class BoxLossConfig:
    """l1 / smooth_l1 on box deltas, giou on decoded boxes, dfl+giou (GFL head: DFL on the side
    distributions plus GIoU on the decoded boxes)."""
    type: Literal["l1", "smooth_l1", "giou", "dfl+giou"] = "l1"
    beta: float = 0.11  # smooth-L1 transition point
    weight: float = 1.0  # of the L1 / smooth-L1 / GIoU term
    dfl_weight: float = 0.25
    # Anchor heads, per positive: none (mean over positives); centerness (weighted by its centerness target,
    # ATSS); iou_target (by the detached IoU of its decoded box with its gt, divided by the sum of those over
    # processes, at least 1: the official EFL code). The GFL head weights by its max class score, always.
    weighting: Literal["none", "centerness", "iou_target"] = "none"

    def __post_init__(self):
        if self.beta < 0 or self.weight < 0 or self.dfl_weight < 0:
            raise ValueError("loss_box.beta, loss_box.weight and loss_box.dfl_weight must be >= 0")


@dataclass(frozen=True)
class BoxCoderConfig:
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    clamp: float = math.log(1000.0 / 16)


@dataclass(frozen=True)
class TestConfig:
    score_thr: float = 0.05   # detections scoring below are dropped (scores are probabilities: 0..1)
    topk_per_level: int = 1000  # candidates per FPN level kept before NMS
    nms_iou: float = 0.5      # NMS drops a box overlapping a higher-scoring one of its class by more (0..1)
    max_dets: int = 100       # detections kept per image after NMS
    # Anchor heads with a quality branch: the detection score is sqrt(p q) or p q (p class, q quality
    # probability); score_thr applies to that score (combined) or to p alone (class: sfzhang15/ATSS and the
    # official EFL code; q then joins the ranking only). Without a quality branch both are p.
    score_thr_on: Literal["combined", "class"] = "combined"
    quality_fusion: Literal["sqrt", "product"] = "sqrt"
    topk_capped_at_anchors: bool = False  # per level at most as many candidates as anchors (official EFL code)

    def __post_init__(self):
        for name in ("score_thr", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.test.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("topk_per_level", "max_dets"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.test.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelConfig:
    # retinanet and atss build the same anchor head (the atss configs switch on its ATSS options);
    # gfl builds the Generalized Focal Loss head.
    type: Literal["retinanet", "atss", "gfl"] = "retinanet"
    # A number, or auto: the number of categories in data.train.ann_file (data.synthetic.num_classes when the
    # synthetic generator is on), resolved when the config is loaded (detector/config_resolve.py).
    num_classes: Union[int, Literal["auto"]] = 80
    # A focaldet checkpoint whose model weights initialise the whole detector (fine-tuning, e.g. weights
    # converted by tools/convert_torchvision.py); entries whose shape differs (another class count) keep
    # their initialisation. null: random init plus backbone.weights.
    init_checkpoint: Optional[str] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss_cls: ClsLossConfig = field(default_factory=ClsLossConfig)
    loss_box: BoxLossConfig = field(default_factory=BoxLossConfig)
    box_coder: BoxCoderConfig = field(default_factory=BoxCoderConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def __post_init__(self):
        if self.num_classes != "auto" and self.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {self.num_classes}")
        box, head = self.loss_box.type, self.head
        if self.type == "gfl":
            if box not in ("dfl+giou", "giou"):
                raise ValueError(f"model.loss_box.type {box!r} does not fit model.type gfl: its box branch predicts "
                                 "side distributions, trained with dfl+giou (or giou alone)")
            if head.quality_branch is not None:
                raise ValueError("model.head.quality_branch does not apply to model.type gfl: its classification "
                                 "score already is the joint class-IoU quality")
            if self.loss_box.weighting != "none":
                raise ValueError("model.loss_box.weighting does not apply to model.type gfl: its box losses are "
                                 "weighted by the detached max class score")
            if len(self.anchors.scales) * len(self.anchors.ratios) != 1:
                raise ValueError("model.type gfl uses one anchor point per location: give one anchor scale and "
                                 "one ratio")
        elif box == "dfl+giou":
            raise ValueError(f"model.loss_box.type dfl+giou needs the distribution outputs of model.type gfl; "
                             f"model.type {self.type} predicts box deltas (use l1, smooth_l1 or giou)")
