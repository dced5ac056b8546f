"""Detection transforms built on torchvision.transforms.v2.

The image is wrapped as a `tv_tensors.Image` and the boxes and ignore boxes as `tv_tensors.BoundingBoxes`,
so every v2 transform moves them together; the wrapper `DetectionTransform` then unwraps them into plain
tensors and records the resized image size in `target["img_size"]`.

The pipeline is: (training, ``data.augment``: photometric distortion and crops, :mod:`detector.data.augment`),
resize the shorter side to a (random, in training) minimum size with the longer side capped,
(or large-scale jitter), dropping boxes cut to slivers, horizontal flip (training only), uint8 -> float32 in [0, 1], normalise with mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detector.data.augment import DropSmallBoxes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) for scaling the shorter side to `min_size`, unless that makes the longer side exceed
    `max_size`, in which case the longer side is scaled to `max_size`. Sides are rounded to the nearest pixel.
    """
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class ResizeShortestEdge(v2.Transform):
    """Aspect-preserving resize: shorter side to one of `min_sizes`, longer side at most `max_size`.

    With several `min_sizes` and `random=True` a size is drawn per call with torch's RNG (multi-scale training):
    one of `min_sizes` (`sampling="choice"`, detectron2's multi-scale) or any integer from min(min_sizes) to
    max(min_sizes), uniformly (`sampling="range"`, mmdetection's multiscale_mode 'range'); otherwise the last
    one is used. Written here rather than taken from v2.RandomShortestSize, which truncates instead of rounding
    (a 600 px side scaled to 800 can come out as 799).
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, random: bool = False,
                 sampling: str = "choice") -> None:
        super().__init__()
        if not min_sizes or any(s <= 0 for s in min_sizes) or max_size <= 0:
            raise ValueError(f"sizes must be positive, got min_sizes={min_sizes}, max_size={max_size}")
        if sampling not in ("choice", "range"):
            raise ValueError(f"sampling must be choice or range, got {sampling!r}")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.random = random
        self.sampling = sampling

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        if self.random and len(self.min_sizes) > 1 and self.sampling == "range":
            min_size = int(torch.randint(min(self.min_sizes), max(self.min_sizes) + 1, ()))
        elif self.random and len(self.min_sizes) > 1:
            min_size = self.min_sizes[int(torch.randint(len(self.min_sizes), ()))]
        else:
            min_size = self.min_sizes[-1]
        return {"size": resized_shape(height, width, min_size, self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=list(params["size"]), antialias=True)


class DetectionTransform:
    """Callable `(image_uint8 (3, H, W), target) -> (image_float (3, h, w), target)`.

    Applies a v2 pipeline to the image, `target["boxes"]` and `target["ignore_boxes"]` jointly and sets
    `target["img_size"]` to the size after the pipeline (before any batch padding). Other target entries pass
    through unchanged; the input target is not modified.
    """

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        canvas_size = tuple(image.shape[-2:])
        boxes = {
            key: tv_tensors.BoundingBoxes(
                target[key], format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=canvas_size
            )
            for key in ("boxes", "ignore_boxes")
            if key in target
        }
        if "labels" in target:  # a plain tensor: v2 passes it through; crops drop labels with their boxes
            boxes["labels"] = target["labels"]
        image, boxes = self.pipeline(tv_tensors.Image(image), boxes)
        target = dict(target)
        for key, value in boxes.items():
            target[key] = value.as_subclass(torch.Tensor)  # (G, 4) / (C, 4) / (G,)
        image = image.as_subclass(torch.Tensor)  # (3, h, w)
        target["img_size"] = (int(image.shape[-2]), int(image.shape[-1]))
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def build_transforms(
    train: bool,
    min_size: int | Sequence[int],
    max_size: int,
    flip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_size_sampling: str = "choice",
    before_resize: Sequence[v2.Transform] = (),
    jitter: tuple[float, v2.Transform] | None = None,
    min_box_size: float | None = None,
) -> DetectionTransform:
    """Build the train or eval transform.

    Args:
        train: multi-scale resize (a random size from `min_size`, as `min_size_sampling` says) and horizontal
            flip when True; otherwise resize with the single (or last) `min_size` and no flip.
        min_size: target shorter side, or a list of them for multi-scale training.
        min_size_sampling: "choice" (one of the listed sizes) or "range" (any integer between their min and max).
        max_size: cap on the longer side.
        flip_prob: probability of a horizontal flip (training only).
        mean, std: per-channel normalisation on the [0, 1] scale.
        before_resize: training augmentations on the uint8 image and its boxes before the resize
            (:mod:`detector.data.augment`: photometric, IoU crop, area crop).
        jitter: (probability, transform) that replaces the resize for that fraction of the samples
            (large-scale jitter).
        min_box_size: when given, boxes and crowd regions narrower or shorter than this (pixels of the
            network input) are dropped after the resize (after crops have cut them).
    """
    min_sizes = [int(min_size)] if isinstance(min_size, int) else [int(s) for s in min_size]
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    resize: v2.Transform = ResizeShortestEdge(min_sizes, max_size, random=train, sampling=min_size_sampling)
    if jitter is not None:
        resize = v2.RandomChoice([jitter[1], resize], p=[jitter[0], 1.0 - jitter[0]])
    steps: list[v2.Transform] = [*before_resize, resize]
    if min_box_size is not None:
        steps.append(DropSmallBoxes(min_box_size))
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
    ]
    return DetectionTransform(v2.Compose(steps))
