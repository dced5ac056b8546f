"""GroupedBatchSampler and InferenceSampler."""

from __future__ import annotations

import itertools
import random

import pytest
from torch.utils.data import DataLoader

from detector.data import GroupedBatchSampler, InferenceSampler


def random_ratios(num_images, seed=0):
    rng = random.Random(seed)
    return [rng.choice([0.5, 0.75, 1.0, 1.33, 2.0]) for _ in range(num_images)]


def epoch_batches(sampler, epoch, start_batch=0):
    sampler.set_epoch(epoch, start_batch=start_batch)
    return list(sampler)


def test_deterministic_under_seed_and_epoch():
    ratios = random_ratios(50)
    a, b = GroupedBatchSampler(ratios, 4, seed=3), GroupedBatchSampler(ratios, 4, seed=3)
    assert epoch_batches(a, 0) == epoch_batches(b, 0)
    assert epoch_batches(a, 5) == epoch_batches(b, 5)
    assert epoch_batches(a, 0) != epoch_batches(a, 1)
    assert epoch_batches(a, 0) != epoch_batches(GroupedBatchSampler(ratios, 4, seed=4), 0)
    assert list(a) == list(a)  # iterating again repeats the epoch


def test_batches_have_one_orientation():
    ratios = [0.5] * 16 + [2.0] * 12 + [1.0] * 4  # 16 landscape, 16 portrait (h/w >= 1)
    sampler = GroupedBatchSampler(ratios, 4, seed=1)
    for epoch in range(5):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == 8
        for batch in batches:
            assert len(batch) == 4 and len({ratios[i] >= 1.0 for i in batch}) == 1
        assert sorted(itertools.chain(*batches)) == list(range(32))


def test_only_the_merged_leftover_batch_may_mix_orientations():
    ratios = random_ratios(61, seed=2)
    sampler = GroupedBatchSampler(ratios, 5, seed=0)
    for epoch in range(10):
        batches = epoch_batches(sampler, epoch)
        mixed = [i for i, batch in enumerate(batches) if len({ratios[j] >= 1.0 for j in batch}) > 1]
        assert mixed in ([], [len(batches) - 1])
        assert all(len(batch) == 5 for batch in batches)
        assert len(set(itertools.chain(*batches))) == 5 * len(batches)  # no index twice


def test_without_grouping_batches_are_consecutive_shard_chunks():
    sampler = GroupedBatchSampler([1.0, 0.5] * 5, 3, shuffle=False, group_by_aspect_ratio=False, drop_last=False)
    assert list(sampler) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    sampler = GroupedBatchSampler([1.0, 0.5] * 5, 3, shuffle=False, group_by_aspect_ratio=True, drop_last=False)
    assert list(sampler) == [[0, 2, 4], [1, 3, 5], [6, 7, 8], [9]]


@pytest.mark.parametrize("num_images, world_size", [(24, 3), (25, 4), (7, 2), (3, 4)])
def test_ranks_are_disjoint_and_cover_the_dataset(num_images, world_size):
    ratios = random_ratios(num_images)
    shards = [
        list(itertools.chain(*GroupedBatchSampler(ratios, 1, seed=9, rank=r, world_size=world_size)))
        for r in range(world_size)
    ]
    sizes = {len(shard) for shard in shards}
    padded = -(-num_images // world_size) * world_size
    assert sizes == {padded // world_size}
    everything = list(itertools.chain(*shards))
    assert set(everything) == set(range(num_images))
    assert len(everything) - len(set(everything)) == padded - num_images  # duplicates are only the padding
    if num_images % world_size == 0:
        for a, b in itertools.combinations(shards, 2):
            assert not set(a) & set(b)


def test_shards_come_from_one_permutation():
    ratios = random_ratios(12)
    full = list(itertools.chain(*GroupedBatchSampler(ratios, 1, seed=5, group_by_aspect_ratio=False)))
    for rank in range(3):
        sampler = GroupedBatchSampler(ratios, 1, seed=5, group_by_aspect_ratio=False, rank=rank, world_size=3)
        assert list(itertools.chain(*sampler)) == full[rank::3]


def test_len_matches_iteration_in_every_configuration():
    for num_images, batch_size, world_size, drop_last, group in itertools.product(
        (1, 5, 17, 40), (1, 2, 3, 8), (1, 2, 3), (True, False), (True, False)
    ):
        ratios = random_ratios(num_images, seed=num_images)
        lengths = set()
        for rank, epoch in itertools.product(range(world_size), range(3)):
            sampler = GroupedBatchSampler(ratios, batch_size, seed=1, group_by_aspect_ratio=group, rank=rank,
                                          world_size=world_size, drop_last=drop_last)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            assert all(len(b) == batch_size for b in batches[:-1])
            if drop_last and batches:
                assert len(batches[-1]) == batch_size
            lengths.add(len(batches))
        assert len(lengths) == 1  # every rank, every epoch: the same count


def test_start_batch_skips_and_then_resets():
    sampler = GroupedBatchSampler(random_ratios(40), 4, seed=2)
    full = epoch_batches(sampler, 3)
    sampler.set_epoch(3, start_batch=4)
    assert len(sampler) == len(full) - 4
    assert list(sampler) == full[4:]
    assert len(sampler) == len(full)
    assert list(sampler) == full  # only the first iteration after set_epoch is shortened
    with pytest.raises(ValueError):
        sampler.set_epoch(0, start_batch=len(full) + 1)


def test_dataloader_uses_it_as_batch_sampler():
    sampler = GroupedBatchSampler(random_ratios(20), 3, seed=0)
    loader = DataLoader(list(range(20)), batch_sampler=sampler)
    batches = [batch.tolist() for batch in loader]
    assert len(loader) == len(batches) == 6
    assert batches == list(sampler)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        GroupedBatchSampler([1.0], 0)
    with pytest.raises(ValueError):
        GroupedBatchSampler([1.0], 1, rank=2, world_size=2)
    with pytest.raises(ValueError):
        GroupedBatchSampler([], 1)
    with pytest.raises(ValueError):
        InferenceSampler(5, rank=1, world_size=1)


@pytest.mark.parametrize("size, world_size", [(10, 3), (9, 3), (2, 4), (0, 2), (7, 1)])
def test_inference_sampler_shards_contiguously_without_padding(size, world_size):
    shards = [list(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)]
    assert list(itertools.chain(*shards)) == list(range(size))  # contiguous, ordered, each index once
    lengths = [len(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)]
    assert lengths == [len(shard) for shard in shards]
    assert max(lengths) - min(lengths) <= 1
