"""Training augmentations on images and boxes together (``data.augment``), built on torchvision.transforms.v2.

A sample travels through the pipeline as ``(image, targets)``: a ``tv_tensors.Image`` (uint8 before
normalisation) and a dict with ``boxes`` and ``ignore_boxes`` (crowd regions), both ``tv_tensors.BoundingBoxes``
in XYXY pixels, and ``labels`` (G,), a plain tensor the v2 transforms pass through untouched. Every geometric
kernel (crop, resize, pad, flip) moves both box sets with the image and clamps them to the new canvas.

Steps, in pipeline order (each applied with its own probability, drawn from torch's global generator, which
:class:`~detector.data.seeded.SeededDataset` seeds per sample so exact resume keeps working):

* photometric: ``v2.ColorJitter`` (brightness, contrast, saturation, hue in random order), image only;
* :class:`IoUCrop`: SSD's crop, parameters from ``v2.RandomIoUCrop``'s sampler: a crop whose IoU with some box
  reaching a threshold drawn from ``min_ious``; the boxes whose centre lies outside it are dropped, with their
  labels; crowd regions are cut to the crop (they stay ignore regions where they still overlap the image);
* :class:`RandomAreaCrop`: a crop of random area and aspect ratio, parameters from ``v2.RandomResizedCrop``;
  the usual resize then brings it to the network's input size;
* large-scale jitter (replaces the usual resize for the samples it is applied to): ``v2.ScaleJitter`` then
  ``v2.RandomCrop`` to the output size, padding with the mean colour (zero after normalisation, as batch padding);
* :class:`DropSmallBoxes` after the resize: boxes and crowd regions narrower or shorter than ``min_box_size``
  pixels (a crop cut them to a sliver) leave the sample, labels with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["IoUCrop", "RandomAreaCrop", "DropSmallBoxes", "crop_sample", "large_scale_jitter"]


def crop_sample(image: Any, targets: dict, top: int, left: int, height: int, width: int) -> tuple[Any, dict]:
    """The image and both box sets cut to the window (top, left, height, width); boxes clamped to it."""
    cropped = {key: F.crop(value, top=top, left=left, height=height, width=width)
               if isinstance(value, tv_tensors.BoundingBoxes) else value for key, value in targets.items()}
    return F.crop(image, top=top, left=left, height=height, width=width), cropped


def keep_boxes(targets: dict, keep: torch.Tensor) -> dict:
    """``targets`` with only the ground-truth boxes (and labels) where ``keep`` (G,) is true."""
    targets = dict(targets)
    targets["boxes"] = tv_tensors.wrap(targets["boxes"][keep], like=targets["boxes"])
    targets["labels"] = targets["labels"][keep]
    return targets


def _applies(prob: float) -> bool:
    return prob >= 1.0 or (prob > 0.0 and float(torch.rand(())) < prob)


class IoUCrop(v2.Transform):
    """SSD's random IoU crop with probability ``prob`` (module docstring). The crop window comes from
    ``v2.RandomIoUCrop``'s sampler over the ground-truth boxes only (crowd regions take no part in the choice);
    a threshold of 1 or an image without boxes leaves the sample whole."""

    def __init__(self, prob: float, min_scale: float, max_scale: float, min_aspect_ratio: float,
                 max_aspect_ratio: float, min_ious: Sequence[float], trials: int) -> None:
        super().__init__()
        self.prob = prob
        self.sampler = v2.RandomIoUCrop(min_scale, max_scale, min_aspect_ratio, max_aspect_ratio,
                                        sampler_options=[float(v) for v in min_ious], trials=trials)

    def forward(self, image: Any, targets: dict) -> tuple[Any, dict]:
        if not _applies(self.prob) or len(targets["boxes"]) == 0:
            return image, targets
        params = self.sampler.make_params([image, targets["boxes"]])
        if not params:  # the "keep the image whole" threshold
            return image, targets
        targets = keep_boxes(targets, params["is_within_crop_area"])  # (G,) centres inside the crop
        return crop_sample(image, targets, params["top"], params["left"], params["height"], params["width"])

    def extra_repr(self) -> str:
        s = self.sampler
        return (f"prob={self.prob}, scale=({s.min_scale}, {s.max_scale}), aspect_ratio=({s.min_aspect_ratio}, "
                f"{s.max_aspect_ratio}), min_ious={s.options}, trials={s.trials}")


class RandomAreaCrop(v2.Transform):
    """With probability ``prob``, crop a window covering ``scale`` of the image's area with width / height in
    ``ratio`` (``v2.RandomResizedCrop``'s sampling, log-uniform ratio, centre-crop fallback), without resizing."""

    def __init__(self, prob: float, scale: Sequence[float], ratio: Sequence[float]) -> None:
        super().__init__()
        self.prob = prob
        self.sampler = v2.RandomResizedCrop(size=1, scale=tuple(scale), ratio=tuple(ratio))

    def forward(self, image: Any, targets: dict) -> tuple[Any, dict]:
        if not _applies(self.prob):
            return image, targets
        params = self.sampler.make_params([image])
        return crop_sample(image, targets, params["top"], params["left"], params["height"], params["width"])

    def extra_repr(self) -> str:
        return f"prob={self.prob}, scale={self.sampler.scale}, ratio={self.sampler.ratio}"


class DropSmallBoxes(v2.Transform):
    """Remove ground-truth boxes (with their labels) and crowd regions whose width or height is below
    ``min_size`` pixels; boxes are already clamped to the image by the kernels that cut them."""

    def __init__(self, min_size: float) -> None:
        super().__init__()
        self.min_size = float(min_size)

    def _large(self, boxes: torch.Tensor) -> torch.Tensor:
        sides = boxes[:, 2:] - boxes[:, :2]  # (N, 2) width, height
        return (sides >= self.min_size).all(dim=1)  # (N,)

    def forward(self, image: Any, targets: dict) -> tuple[Any, dict]:
        targets = keep_boxes(targets, self._large(targets["boxes"]))
        crowd = targets["ignore_boxes"]
        targets["ignore_boxes"] = tv_tensors.wrap(crowd[self._large(crowd)], like=crowd)
        return image, targets

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}"


def large_scale_jitter(size: Sequence[int], scale_range: Sequence[float], mean: Sequence[float]) -> v2.Compose:
    """Resize so the image fits ``size`` = (height, width) times a scale drawn from ``scale_range``, then a
    random crop to ``size``, padded with the ``mean`` colour (on the [0, 1] scale) where the image is smaller."""
    height, width = int(size[0]), int(size[1])
    fill = tuple(int(round(255 * m)) for m in mean)
    # v2.ScaleJitter reads target_size as (width, height): r = min(target[1] / H, target[0] / W) * scale
    return v2.Compose([v2.ScaleJitter((width, height), scale_range=tuple(scale_range), antialias=True),
                       v2.RandomCrop((height, width), pad_if_needed=True,
                                     fill={tv_tensors.Image: fill, "others": 0})])
