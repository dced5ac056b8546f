"""Inference batches grouped by padded shape: hand-computed shapes, full batches, exact shards."""

from __future__ import annotations

import pytest

from detector.data.inference_batches import ShapeGroupedBatchSampler, padded_shape, shape_grouped_batches


def test_padded_shape_is_the_test_resize_rounded_up():
    # 480 x 640 -> shorter side 800 would make the longer 1066.7 <= 1333: (800, 1067), padded to 32: (800, 1088)
    assert padded_shape(480, 640, 800, 1333, 32) == (800, 1088)
    # 300 x 1000 -> 800 / 300 makes 2667 > 1333: scale 1.333, (400, 1333) -> (416, 1344)
    assert padded_shape(300, 1000, 800, 1333, 32) == (416, 1344)
    # quick-start sizes: longer side capped at 256, 200 x 256 -> (200, 256) -> (224, 256)
    assert padded_shape(200, 256, 256, 256, 32) == (224, 256)
    assert padded_shape(64, 64, 64, 64, 1) == (64, 64)


def test_batches_hold_one_shape_largest_first_and_are_as_full_as_possible():
    shapes = [(32, 64), (64, 64), (32, 64), (64, 64), (32, 64), (64, 32), (32, 64)]
    batches = shape_grouped_batches(shapes, list(range(len(shapes))), batch_size=2)
    assert batches == [[1, 3], [0, 2], [4, 6], [5]]  # 64x64 (area 4096) first; equal areas by (h, w)
    with pytest.raises(ValueError, match="batch_size"):
        shape_grouped_batches(shapes, [0], batch_size=0)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_are_contiguous_exact_and_single_shape(world_size):
    shapes = [((i * 7) % 3 * 32 + 32, (i * 5) % 2 * 32 + 32) for i in range(23)]
    seen = []
    for rank in range(world_size):
        sampler = ShapeGroupedBatchSampler(shapes, batch_size=4, rank=rank, world_size=world_size)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        members = sorted(index for batch in batches for index in batch)
        assert members == list(range(members[0], members[-1] + 1))  # this rank's contiguous shard
        assert all(len({shapes[i] for i in batch}) == 1 and 1 <= len(batch) <= 4 for batch in batches)
        # no more batches than one partial batch per shape present in the shard requires
        per_shape = {}
        for index in members:
            per_shape[shapes[index]] = per_shape.get(shapes[index], 0) + 1
        assert len(batches) == sum(-(-count // 4) for count in per_shape.values())
        seen.extend(members)
    assert seen == list(range(23))  # rank order, every image once
