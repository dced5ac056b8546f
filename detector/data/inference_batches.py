"""Inference batches of images that share one padded shape, so that an image's detections never depend on its batch.

A batch is padded to its largest image rounded up to ``size_divisor``. Padding is not neutral: the convolutions
see it at the image's borders, and the GroupNorm layers of the heads (and BatchNorm in training mode) take
statistics over the whole padded map, so an image batched with a larger one gets different scores everywhere, not
only at its borders. Grouping images by their padded shape makes every image padded to its own canonical shape,
``ceil(resized size / size_divisor) * size_divisor``, whatever its partners, the batch size or the number of
processes; it also removes the compute spent on padding.

The shapes are known before decoding: the test resize is a function of the image's size, which the annotation
file holds (:func:`padded_shape`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from detector.data.samplers import InferenceSampler
from detector.data.transforms import resized_shape

__all__ = ["padded_shape", "ShapeGroupedBatchSampler", "shape_grouped_batches"]


def padded_shape(height: int, width: int, min_size: int, max_size: int, size_divisor: int) -> tuple[int, int]:
    """(H, W) an image of ``height`` x ``width`` is padded to at inference: its test resize
    (:func:`~detector.data.transforms.resized_shape`) rounded up to a multiple of ``size_divisor``."""
    resized_h, resized_w = resized_shape(height, width, min_size, max_size)
    return (math.ceil(resized_h / size_divisor) * size_divisor, math.ceil(resized_w / size_divisor) * size_divisor)


def shape_grouped_batches(shapes: Sequence[tuple[int, int]], indices: Sequence[int],
                          batch_size: int) -> list[list[int]]:
    """``indices`` cut into batches of at most ``batch_size`` whose images (``shapes[index]``) share one shape.

    Shapes are visited largest area first (the memory peak comes at the start), each shape's images in the given
    order; every shape fills full batches, leaving at most one partial batch per shape, the fewest possible.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index in indices:
        groups.setdefault(tuple(shapes[index]), []).append(index)
    batches = []
    for shape in sorted(groups, key=lambda hw: (-hw[0] * hw[1], hw)):
        members = groups[shape]
        batches.extend(members[start:start + batch_size] for start in range(0, len(members), batch_size))
    return batches


class ShapeGroupedBatchSampler(Sampler[list[int]]):
    """Batches of this process's contiguous shard of ``range(len(shapes))`` (as :class:`InferenceSampler`: no
    padding, no duplicates, shards in rank order), each batch holding images of one padded shape.

    Args:
        shapes: the padded (H, W) of every image of the dataset (:func:`padded_shape`).
        batch_size: images per batch at most.
        rank, world_size: this process's place in a distributed run.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        shard = InferenceSampler(len(shapes), rank=rank, world_size=world_size)
        self.batches = shape_grouped_batches(shapes, list(shard), batch_size)
        self.num_images = len(shard)

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.batches])

    def __len__(self) -> int:
        return len(self.batches)
