"""Streaming prediction: prepared images grouped into batches of one padded shape as they arrive, results
released in input order, with bounded memory.

The evaluation knows every image's shape before decoding (the annotation file) and sorts a whole shard by shape
(:mod:`detector.data.inference_batches`). A stream of user images is only known one image at a time, so it is
grouped on the fly: an image waits in its shape's bucket until the bucket holds a full batch, or until
``max_pending`` images wait in all, when the bucket holding the oldest one runs as it is. At most ``max_pending``
prepared images are held, and a result waits for at most ``max_pending`` later images before it is released.
Every image is still padded to its own canonical shape, so its detections do not depend on this grouping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from detector.data.image_io import ImageReadError, describe_source, read_image

__all__ = ["PreparedImage", "Failure", "ImagePreparer", "canonical_shape", "shape_batches", "InOrder", "identity"]

T = TypeVar("T")


@dataclass
class PreparedImage:
    """An input after the model's test resize and normalisation, not yet padded."""
    index: int                     # position in the input order
    image: torch.Tensor            # (3, h, w) float32, normalised
    img_size: tuple[int, int]      # (h, w) after the resize
    orig_size: tuple[int, int]     # (H, W) of the input image
    source: str                    # the path, or a description of an in-memory image
    original: torch.Tensor | None = None  # (3, H, W) uint8, kept when the caller draws the detections


@dataclass
class Failure:
    """An input that could not be read or prepared."""
    index: int
    source: str
    message: str


class ImagePreparer:
    """Reads one input and applies the model's test transform (resize, normalise); small and picklable, so
    DataLoader workers can run it (the model stays in the main process)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform  # (image (3, H, W), target) -> (image (3, h, w) float, target with img_size)

    def __call__(self, source, index: int = 0, keep_original: bool = False) -> PreparedImage:
        image = read_image(source)  # (3, H, W) uint8, or float32 in [0, 1]
        prepared, target = self.transform(image, {})
        original = None
        if keep_original:
            original = image if image.dtype == torch.uint8 else (image * 255).round().to(torch.uint8)
        return PreparedImage(index, prepared, tuple(target["img_size"]), (int(image.shape[1]), int(image.shape[2])),
                             describe_source(source), original)

    def or_failure(self, source, index: int, keep_original: bool = False) -> PreparedImage | Failure:
        """:meth:`__call__`, or a Failure naming the input when it cannot be read."""
        try:
            return self(source, index, keep_original)
        except ImageReadError as err:
            return Failure(index, describe_source(source), str(err))


def canonical_shape(img_size: tuple[int, int], size_divisor: int) -> tuple[int, int]:
    """The padded (H, W) of an image resized to ``img_size``: each side rounded up to ``size_divisor``."""
    return (math.ceil(img_size[0] / size_divisor) * size_divisor, math.ceil(img_size[1] / size_divisor) * size_divisor)


def shape_batches(items: Iterable[T], key: Callable[[T], Hashable | None], batch_size: int,
                  max_pending: int) -> Iterator[list[T]]:
    """Batches of ``items`` sharing ``key(item)``, at most ``batch_size`` each, as they fill (see the module
    docstring); an item whose key is None (a failure) passes through at once as a batch of its own."""
    if batch_size < 1 or max_pending < batch_size:
        raise ValueError(f"need 1 <= batch_size <= max_pending, got {batch_size} and {max_pending}")
    pending: dict[Hashable, list[T]] = {}  # insertion order: the first bucket holds the oldest waiting item
    num_pending = 0
    for item in items:
        group = key(item)
        if group is None:
            yield [item]
            continue
        bucket = pending.setdefault(group, [])
        bucket.append(item)
        num_pending += 1
        if len(bucket) == batch_size:
            num_pending -= batch_size
            yield pending.pop(group)
        elif num_pending >= max_pending:
            oldest = next(iter(pending))
            num_pending -= len(pending[oldest])
            yield pending.pop(oldest)
    while pending:
        yield pending.pop(next(iter(pending)))


class InOrder(Generic[T]):
    """Reorders ``(index, value)`` pairs that arrive in any order into index order 0, 1, 2, ..."""

    def __init__(self) -> None:
        self.next_index = 0
        self.waiting: dict[int, T] = {}

    def add(self, index: int, value: T) -> list[T]:
        """Take one value; return the values now ready, in order."""
        self.waiting[index] = value
        ready = []
        while self.next_index in self.waiting:
            ready.append(self.waiting.pop(self.next_index))
            self.next_index += 1
        return ready

    def remaining(self) -> list[T]:
        """Values that arrived but wait for an earlier index (e.g. when a run stops early), in index order."""
        values = [self.waiting[index] for index in sorted(self.waiting)]
        self.waiting.clear()
        return values


def identity(batch: Any) -> Any:
    """A DataLoader ``collate_fn`` that hands items over unchanged (module-level, so workers can pickle it)."""
    return batch
