"""The config schema: every key a YAML file may set, its type, default and meaning.

Defaults follow the RetinaNet paper's R50-FPN 1x COCO setting (see README "Config reference").
``Config.check()`` holds the rules that span several keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from detector.config_trackers import DEFAULT_TRACKERS, MlflowConfig, TrackerName, WandbConfig, check_tracker_names


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
    num_classes: int = 80
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
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {self.num_classes}")
        box, head = self.loss_box.type, self.head
        if self.type == "gfl":
            if box not in ("dfl+giou", "giou"):
                raise ValueError(f"model.loss_box.type {box!r} does not fit model.type gfl: its box branch predicts "
                                 "side distributions, trained with dfl+giou (or giou alone)")
            if head.quality_branch is not None:
                raise ValueError("model.head.quality_branch does not apply to model.type gfl: its classification "
                                 "score already is the joint class-IoU quality")
            if len(self.anchors.scales) * len(self.anchors.ratios) != 1:
                raise ValueError("model.type gfl uses one anchor point per location: give one anchor scale and "
                                 "one ratio")
        elif box == "dfl+giou":
            raise ValueError(f"model.loss_box.type dfl+giou needs the distribution outputs of model.type gfl; "
                             f"model.type {self.type} predicts box deltas (use l1, smooth_l1 or giou)")


@dataclass(frozen=True)
class DatasetConfig:
    format: Literal["coco", "lvis"] = "coco"
    ann_file: str = ""
    img_dir: str = ""
    filter_empty: bool = False  # drop images without boxes (training)
    # Training only: repeat-factor sampling threshold t (LVIS), or null for plain sampling.
    repeat_threshold: Optional[float] = None
    # Training only, with repeat_threshold: how each image's repeat factor r_i becomes copies per epoch.
    # stochastic: floor(r_i) + Bernoulli(frac(r_i)) every epoch, the epoch cut or wrapped to round(sum r_i)
    # images (detectron2); ceil: ceil(r_i) copies, the epoch being that list of sum ceil(r_i) images (the
    # official EFL code).
    repeat_rounding: Literal["stochastic", "ceil"] = "stochastic"

    def __post_init__(self):
        if self.repeat_threshold is not None and not 0 < self.repeat_threshold <= 1:
            raise ValueError(f"repeat_threshold must be in (0, 1], got {self.repeat_threshold}")


@dataclass(frozen=True)
class SyntheticConfig:
    """When ``enabled``, the synthetic dataset is generated under ``root`` if it is missing.

    ``format: lvis`` makes the long-tailed LVIS-format variant (``num_rare`` / ``num_common`` classes in the
    rare and common frequency groups, the rest frequent, the most frequent in ``head_images`` images)."""
    enabled: bool = False
    format: Literal["coco", "lvis"] = "coco"
    root: str = "data/synthetic"
    num_train: int = 600
    num_val: int = 100
    image_size: int = 256
    num_classes: int = 6
    min_object_size: int = 16
    max_object_size: int = 160
    max_objects: int = 6
    seed: int = 0
    num_rare: int = 8
    num_common: int = 16
    head_images: int = 200


@dataclass(frozen=True)
class EvaluationConfig:
    # LVIS: "fast" (focaldet's vectorised evaluator, identical numbers) or "lvis-api" (the lvis package).
    lvis_backend: Literal["fast", "lvis-api"] = "fast"
    # COCO: "pycocotools" (the official COCOeval) or "fast" (focaldet's vectorised evaluator, same numbers).
    coco_backend: Literal["fast", "pycocotools"] = "fast"
    # TensorBoard at each evaluation: detections drawn on this many val images (0: none) and per-class
    # precision-recall curves (rank 0 only).
    tensorboard_images: int = 4
    tensorboard_pr_curves: bool = True

    def __post_init__(self):
        if self.tensorboard_images < 0:
            raise ValueError(f"evaluation.tensorboard_images must be >= 0, got {self.tensorboard_images}")


@dataclass(frozen=True)
class DataConfig:
    train: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        ann_file="data/coco/annotations/instances_train2017.json", img_dir="data/coco/train2017",
        filter_empty=True))
    val: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        ann_file="data/coco/annotations/instances_val2017.json", img_dir="data/coco/val2017"))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    batch_size: int = 16  # images per step over all processes (detectron2's IMS_PER_BATCH)
    test_batch_size: int = 8  # per process
    num_workers: int = 4  # per process
    min_size: list[int] = field(default_factory=lambda: [800])  # shorter side(s); several = multi-scale
    max_size: int = 1333
    test_min_size: int = 800
    test_max_size: int = 1333
    flip_prob: float = 0.5
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    size_divisor: int = 32
    aspect_ratio_grouping: bool = True
    on_bad_image: Literal["error", "skip"] = "error"

    def __post_init__(self):
        if self.batch_size < 1 or self.test_batch_size < 1 or self.num_workers < 0:
            raise ValueError("data.batch_size and data.test_batch_size must be >= 1, num_workers >= 0")
        if not self.min_size or min(self.min_size) < 1:
            raise ValueError(f"data.min_size must list positive sizes, got {self.min_size}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"data.{name} needs one value per RGB channel (3 values), got {getattr(self, name)}")
        if min(self.std) <= 0:
            raise ValueError(f"data.std must be > 0 for every channel (pixels are divided by it), got {self.std}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"data.flip_prob must be in [0, 1], got {self.flip_prob}")


@dataclass(frozen=True)
class ScheduleConfig:
    # Give the length in epochs or in iterations (set the other to null); steps are in the same unit.
    epochs: Optional[int] = 12
    iters: Optional[int] = None
    steps: list[int] = field(default_factory=lambda: [8, 11])
    max_iters: Optional[int] = None  # a cap on the iterations actually run (for quick checks)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False
    gamma: float = 0.1
    # Linear warm-up from warmup_factor * lr, in iterations or in epochs (converted with the sampler's batches
    # per epoch, like epochs and steps; with repeat-factor sampling an epoch is the resampled list). At most
    # one of the two may be non-zero.
    warmup_iters: int = 500
    warmup_epochs: int = 0
    warmup_factor: float = 0.001
    clip_grad_norm: Optional[float] = None

    def __post_init__(self):
        if (self.epochs is None) == (self.iters is None):
            raise ValueError("schedule needs exactly one of epochs and iters (set the other to null)")
        length = self.epochs if self.epochs is not None else self.iters
        if length < 1:
            raise ValueError(f"schedule length must be >= 1, got {length}")
        if any(s < 0 or s > length for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"schedule.steps must be increasing and within the schedule, got {self.steps}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"schedule.max_iters must be >= 1, got {self.max_iters}")
        if self.lr <= 0 or self.warmup_iters < 0 or self.warmup_epochs < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError("schedule.lr must be > 0, warmup_iters and warmup_epochs >= 0, warmup_factor in (0, 1]")
        if self.warmup_iters and self.warmup_epochs:
            raise ValueError(f"schedule.warmup_epochs ({self.warmup_epochs}) and schedule.warmup_iters "
                             f"({self.warmup_iters}) both give the warm-up length: set one of them to 0")


@dataclass(frozen=True)
class RuntimeConfig:
    seed: int = 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    amp: Literal["off", "bf16", "fp16"] = "off"
    log_interval: int = 20
    checkpoint_interval: int = 0  # iterations between kept checkpoints; 0: only last.pt at the end
    keep_checkpoints: int = 3
    eval_interval: int = 0  # iterations between evaluations; 0: only at the end
    eval_at_end: bool = True
    deterministic: bool = False
    channels_last: bool = False
    compile: bool = False           # torch.compile the model (first steps pay the compilation)
    fused_optimizer: bool = False   # SGD(fused=True): one kernel for the whole parameter update
    cudnn_benchmark: bool = False   # cudnn autotuning (CUDA; ignored when runtime.deterministic)
    # Resume from <work_dir>/checkpoints/last.pt when it exists, without --resume (e.g. re-queued jobs).
    auto_resume: bool = False
    # Stop (exit non-zero, last good checkpoint kept) after more non-finite losses / gradients in a row.
    max_consecutive_nonfinite: int = 5
    # Where metrics go (rank 0): any of tensorboard (<work_dir>/tb), jsonl (metrics.jsonl), wandb, mlflow.
    trackers: list[TrackerName] = field(default_factory=lambda: list(DEFAULT_TRACKERS))
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self):
        check_tracker_names(list(self.trackers))
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device):
            raise ValueError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"runtime.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.log_interval < 1 or self.checkpoint_interval < 0 or self.eval_interval < 0:
            raise ValueError("runtime.log_interval must be >= 1; checkpoint and eval intervals >= 0")
        if self.max_consecutive_nonfinite < 0:
            raise ValueError(f"runtime.max_consecutive_nonfinite must be >= 0, got {self.max_consecutive_nonfinite}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def check(self) -> None:
        """Rules that span sections; raises ValueError naming the keys."""
        if self.data.synthetic.enabled and self.data.synthetic.num_classes != self.model.num_classes:
            raise ValueError(f"data.synthetic.num_classes ({self.data.synthetic.num_classes}) must equal "
                             f"model.num_classes ({self.model.num_classes})")
