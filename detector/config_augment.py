"""The ``data.augment`` section of the config: training augmentations beyond resize and horizontal flip.

Each augmentation is applied to a sample with its probability ``prob`` (0, the default, leaves it out of the
pipeline, so the paper configs keep their exact transforms). Boxes and crowd (ignore) regions follow the image's
geometry; after a crop, boxes are clipped to the image and those narrower or shorter than ``min_box_size``
pixels are dropped (an image may end up with no box: it trains as a background-only image). See README
"Config reference" and :mod:`detector.data.augment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


def _check_prob(section: str, prob: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"data.augment.{section}.prob must be in [0, 1], got {prob}")


def _check_range(key: str, values: list[float], low: float, high: float, low_open: bool = False) -> None:
    """``values`` is [min, max] with low (<) <= min <= max <= high."""
    above_low = all(v > low if low_open else v >= low for v in values)
    if len(values) != 2 or not above_low or not all(v <= high for v in values) or values[0] > values[1]:
        bound = "(" if low_open else "["
        raise ValueError(f"data.augment.{key} must be [min, max] with min <= max, both in {bound}{low}, {high}], "
                         f"got {values}")


@dataclass(frozen=True)
class PhotometricConfig:
    """Colour jitter (torchvision's ColorJitter, its four changes in random order), image only."""
    prob: float = 0.0
    brightness: float = 0.125  # factor drawn from [1 - b, 1 + b] (0.125 ~ +-32 of 255)
    contrast: float = 0.5      # factor drawn from [1 - c, 1 + c]
    saturation: float = 0.5    # factor drawn from [1 - s, 1 + s]
    hue: float = 0.05          # shift drawn from [-h, h] of a full turn (0.05 = 18 degrees), h <= 0.5

    def __post_init__(self):
        _check_prob("photometric", self.prob)
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.augment.photometric.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"data.augment.photometric.hue must be in [0, 0.5], got {self.hue}")


@dataclass(frozen=True)
class RandomResizedCropConfig:
    """Crop a region of random area and aspect ratio (torchvision's RandomResizedCrop sampling); the usual
    resize (data.min_size, data.max_size) then scales it to the network's input, keeping its aspect ratio."""
    prob: float = 0.0
    scale: list[float] = field(default_factory=lambda: [0.3, 1.0])     # crop area / image area
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # crop width / height

    def __post_init__(self):
        _check_prob("random_resized_crop", self.prob)
        _check_range("random_resized_crop.scale", self.scale, 0.0, 1.0, low_open=True)
        _check_range("random_resized_crop.ratio", self.ratio, 0.0, float("inf"), low_open=True)


@dataclass(frozen=True)
class ScaleJitterConfig:
    """Large-scale jitter (Ghiasi et al. 2021): resize so that the image fits ``size`` times a scale drawn from
    ``scale_range``, then crop (when larger) or pad (when smaller) to exactly ``size``. Replaces the usual resize
    for the samples it is applied to."""
    prob: float = 0.0
    scale_range: list[float] = field(default_factory=lambda: [0.1, 2.0])
    size: Optional[list[int]] = None  # [height, width] of the output; null: [data.max_size, data.max_size]

    def __post_init__(self):
        _check_prob("scale_jitter", self.prob)
        _check_range("scale_jitter.scale_range", self.scale_range, 0.0, 100.0, low_open=True)
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"data.augment.scale_jitter.size must be [height, width] in pixels (or null), "
                             f"got {self.size}")


@dataclass(frozen=True)
class IoUCropConfig:
    """SSD's random crop (torchvision's RandomIoUCrop): a crop of min_scale..max_scale of each side whose IoU
    with at least one box reaches a threshold drawn from ``min_ious`` (1.0: keep the image whole); boxes whose
    centre falls outside the crop are dropped, crowd regions are cut to it."""
    prob: float = 0.0
    min_scale: float = 0.3
    max_scale: float = 1.0
    min_aspect_ratio: float = 0.5  # crop width / height
    max_aspect_ratio: float = 2.0
    min_ious: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    trials: int = 40  # crops tried per drawn threshold

    def __post_init__(self):
        _check_prob("iou_crop", self.prob)
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError("data.augment.iou_crop needs 0 < min_scale <= max_scale <= 1 (fractions of each side), "
                             f"got {self.min_scale} and {self.max_scale}")
        if not 0.0 < self.min_aspect_ratio <= self.max_aspect_ratio:
            raise ValueError("data.augment.iou_crop needs 0 < min_aspect_ratio <= max_aspect_ratio, got "
                             f"{self.min_aspect_ratio} and {self.max_aspect_ratio}")
        if not self.min_ious or not all(0.0 <= v <= 1.0 for v in self.min_ious):
            raise ValueError(f"data.augment.iou_crop.min_ious must list IoUs in [0, 1], got {self.min_ious}")
        if 0.0 not in self.min_ious and 1.0 not in self.min_ious:  # torchvision's sampler retries until one holds
            raise ValueError("data.augment.iou_crop.min_ious must include 0.0 (any crop holding a box centre) or 1.0 "
                             f"(the whole image), else a crop may never be found; got {self.min_ious}")
        if self.trials < 1:
            raise ValueError(f"data.augment.iou_crop.trials must be >= 1, got {self.trials}")


@dataclass(frozen=True)
class AugmentConfig:
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    iou_crop: IoUCropConfig = field(default_factory=IoUCropConfig)
    random_resized_crop: RandomResizedCropConfig = field(default_factory=RandomResizedCropConfig)
    scale_jitter: ScaleJitterConfig = field(default_factory=ScaleJitterConfig)
    # After a crop (iou_crop, random_resized_crop, scale_jitter), boxes and crowd regions narrower or shorter
    # than this, in pixels of the network input, are dropped (torchvision's SanitizeBoundingBoxes: >= 1).
    min_box_size: float = 1.0

    def __post_init__(self):
        if self.min_box_size < 1.0:
            raise ValueError(f"data.augment.min_box_size must be >= 1 (pixels), got {self.min_box_size}")

    @property
    def crops(self) -> bool:
        """Whether any augmentation that can cut boxes is on (then boxes are clipped and sanitised)."""
        return any(section.prob > 0 for section in (self.iou_crop, self.random_resized_crop, self.scale_jitter))
