"""The config schema: every key a YAML file may set, its type, default and meaning.

The ``model`` section lives in :mod:`detector.model_schema`, ``schedule`` in :mod:`detector.config_schedule` and
``data.augment`` in :mod:`detector.config_augment`, ``runtime.wandb`` / ``runtime.mlflow`` in
:mod:`detector.config_trackers`; the rest of data, runtime and evaluation here.
Defaults follow the RetinaNet paper's R50-FPN 1x COCO setting (see README "Config reference").
``Config.check()`` holds the rules that span several keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

# The schedule section and data.augment live in their own modules, the model section in detector.model_schema
# (this one would pass 400 lines); they are imported here so that every section of the schema can be imported
# from this module.
from detector.config_augment import AugmentConfig
from detector.config_schedule import ScheduleConfig
from detector.config_trackers import DEFAULT_TRACKERS, MlflowConfig, TrackerName, WandbConfig, check_tracker_names
from detector.model_schema import (AnchorConfig, AssignerConfig, BackboneConfig, BoxCoderConfig, BoxLossConfig,
                                   ClsLossConfig, HeadConfig, ModelConfig, NeckConfig, TestConfig)

__all__ = ["AnchorConfig", "AssignerConfig", "BackboneConfig", "BoxCoderConfig", "BoxLossConfig", "ClsLossConfig",
           "HeadConfig", "ModelConfig", "NeckConfig", "TestConfig", "DatasetConfig", "SyntheticConfig",
           "TTAConfig", "EvaluationConfig", "AugmentConfig", "DataConfig", "ScheduleConfig", "RuntimeConfig",
           "WandbConfig", "MlflowConfig", "Config"]


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
class TTAConfig:
    """Test-time augmentation (``evaluation.tta``): every image is predicted at each of ``scales`` (shorter side in
    pixels; null: data.test_min_size), with the longer side at most ``max_size`` (null: data.test_max_size), once
    per entry of ``flips`` (false: as is, true: mirrored left-right); all views' detections are merged per image
    by class-aware NMS at model.test.nms_iou, keeping model.test.max_dets (see detector.evaluation.tta)."""
    scales: Optional[list[int]] = None
    flips: list[bool] = field(default_factory=lambda: [False, True])
    max_size: Optional[int] = None

    def __post_init__(self):
        if self.scales is not None:
            if not self.scales or min(self.scales) < 1 or len(set(self.scales)) != len(self.scales):
                raise ValueError(f"evaluation.tta.scales must list distinct positive sizes (shorter side in pixels) "
                                 f"or be null for data.test_min_size, got {self.scales}")
        if not self.flips or len(set(self.flips)) != len(self.flips):
            raise ValueError(f"evaluation.tta.flips must list false and / or true once each, got {self.flips}")
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(f"evaluation.tta.max_size must be a positive size or null, got {self.max_size}")


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
    # Keep checkpoints/best.pt at the evaluation with the highest value of this metric (null: no best.pt).
    save_best: Optional[Literal["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]] = None
    # Test-time augmentation for evaluation and Detector.predict: null (off) or {scales, flips, max_size}
    # (TTAConfig); off in the paper configs.
    tta: Optional[TTAConfig] = None

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
    # Multi-scale: one of min_size (choice, detectron2) or any integer between its min and max (range, mmdetection)
    min_size_sampling: Literal["choice", "range"] = "choice"
    max_size: int = 1333
    test_min_size: int = 800
    test_max_size: int = 1333
    flip_prob: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training only; all off by default
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    size_divisor: int = 32
    aspect_ratio_grouping: bool = True
    on_bad_image: Literal["error", "skip"] = "error"
    # Apply a JPEG's EXIF orientation tag when reading train / val images, so phone photos are upright as viewers
    # show them (and as they were annotated); false keeps the stored pixel grid. Images without the tag (COCO,
    # LVIS) read the same either way.
    exif_orientation: bool = True

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
class EMAConfig:
    # Exponential moving average of the weights, evaluated and checkpointed when on (detector/engine/ema.py):
    # d_t = decay * (1 - exp(-t / warmup)) at update t; decay 0 turns it off.
    decay: float = 0.0
    warmup: int = 2000  # updates (optimiser steps)

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0 or self.warmup < 0:
            raise ValueError(f"runtime.ema needs decay in [0, 1) (0: off) and warmup >= 0, got decay {self.decay}, "
                             f"warmup {self.warmup}")


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
    ema: EMAConfig = field(default_factory=EMAConfig)
    # Stop after this many evaluations in a row without a better evaluation.save_best (null: never).
    early_stop_patience: Optional[int] = None
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
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ValueError(f"runtime.early_stop_patience must be >= 1 evaluations (or null), got "
                             f"{self.early_stop_patience}")


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
                             f"model.num_classes ({self.model.num_classes}); to train on your own data set "
                             "data.synthetic.enabled: false, or give both data.train.ann_file and "
                             "data.val.ann_file outside data.synthetic.root (the generator then turns off)")
        if self.runtime.early_stop_patience is not None and self.evaluation.save_best is None:
            raise ValueError("runtime.early_stop_patience needs evaluation.save_best (the metric that must improve)")
        if self.evaluation.save_best in ("APr", "APc", "APf") and self.data.val.format != "lvis":
            raise ValueError(f"evaluation.save_best {self.evaluation.save_best} is an LVIS metric; data.val.format "
                             f"is {self.data.val.format}")
        if self.data.batch_size % self.schedule.accumulate:
            raise ValueError(f"data.batch_size ({self.data.batch_size}) must be divisible by schedule.accumulate "
                             f"({self.schedule.accumulate}): each optimiser step splits the batch into that many "
                             "micro-batches")
