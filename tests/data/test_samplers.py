"""GroupedBatchSampler and InferenceSampler."""

from __future__ import annotations

import collections
import itertools
import random

import pytest
import torch
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


# ---------------------------------------------------------------------- repeat-factor sampling
REPEATS = [1.0, 1.25, 1.5, 2.7, 3.0, 1.1, 1.0, 4.45, 1.9, 1.0, 2.05, 1.6]  # sum 22.55 -> 23 images an epoch


def rfs_sampler(repeats=REPEATS, **kwargs):
    kwargs = {"batch_size": 1, "seed": 11, "group_by_aspect_ratio": False, **kwargs}
    return GroupedBatchSampler(random_ratios(len(repeats), seed=4), repeat_factors=repeats, **kwargs)


def epoch_indices(sampler, epoch):
    return list(itertools.chain(*epoch_batches(sampler, epoch)))


def test_rfs_epoch_has_round_sum_r_images_every_epoch():
    sampler = rfs_sampler()
    assert sampler.epoch_size == 23 and len(sampler) == 23
    for epoch in range(20):
        indices = epoch_indices(sampler, epoch)
        assert len(indices) == 23 and set(indices) <= set(range(12))
    assert rfs_sampler([1.25, 1.25]).epoch_size == 3  # 2.5 rounds half up
    assert rfs_sampler([1.2, 1.2]).epoch_size == 2
    # All factors 1: exactly one permutation of the images, as without RFS.
    plain = rfs_sampler([1.0] * 12)
    assert sorted(epoch_indices(plain, 3)) == list(range(12))


def test_rfs_mean_count_per_image_is_its_repeat_factor():
    # Per epoch, image i gets floor(r_i) copies + Bernoulli(frac r_i) (variance <= 1/4), then the list of
    # M copies is cut or wrapped to L = 23 at random positions; M has std sqrt(sum frac(1 - frac)) ~ 1.3,
    # and each cut or added copy is image i's with probability ~ r_i / S (S = sum r = 22.55), which adds
    # about r_i / S * E|M - L| < 0.25 of variance. The per-epoch std of a count is thus < 0.75 (measured:
    # <= 0.6) and the mean over 2000 epochs has a standard error < 0.75 / sqrt(2000) = 0.017.
    # Expectation: E[count_i] = L * E[c_i / M] ~ r_i * L / S; the ratio-of-means error is about
    # r_i * Var(M) / S^2 < 0.015 (measured over 20000 epochs: <= 0.008). Tolerance: 5 (measured) standard
    # errors + 0.015, which a wrong rule exceeds by far (ignoring frac is off by up to 0.5, ignoring the
    # factors by up to 3.4). Against r_i itself the rounding L / S = 23 / 22.55 adds 2% of r_i.
    num_epochs = 2000
    sampler = rfs_sampler()
    counts = torch.zeros(num_epochs, len(REPEATS), dtype=torch.float64)
    for epoch in range(num_epochs):
        sampler.set_epoch(epoch)
        counts[epoch] = torch.bincount(torch.tensor(sampler._shard_indices()), minlength=len(REPEATS)).double()
    mean, std = counts.mean(0), counts.std(0)
    repeats = torch.tensor(REPEATS, dtype=torch.float64)
    tolerance = 5 * std / num_epochs**0.5 + 0.015
    assert (std < 0.75).all()
    assert ((mean - repeats * 23 / repeats.sum()).abs() < tolerance).all(), (mean, tolerance)
    assert ((mean - repeats).abs() < tolerance + 0.02 * repeats).all()


def test_rfs_is_deterministic_under_seed_and_epoch():
    a, b = rfs_sampler(batch_size=3, group_by_aspect_ratio=True), rfs_sampler(batch_size=3, group_by_aspect_ratio=True)
    assert epoch_batches(a, 2) == epoch_batches(b, 2)
    assert epoch_batches(a, 2) != epoch_batches(a, 3)
    assert epoch_batches(a, 2) != epoch_batches(rfs_sampler(batch_size=3, seed=12, group_by_aspect_ratio=True), 2)
    sampler = rfs_sampler(shuffle=False)  # no shuffle: copies in index order (a random number of them),
    indices = epoch_indices(sampler, 0)  # wrapped from the head if there are fewer than 23
    assert sum(b < a for a, b in zip(indices, indices[1:])) <= 1


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_rfs_ranks_split_one_epoch_list(world_size):
    # L = 23 images; each rank gets ceil(23 / world_size), the list being padded with its own head as without
    # RFS. The ranks' shards, as multisets of positions of that list, are disjoint and cover it.
    for epoch in range(4):
        full = rfs_sampler()
        full.set_epoch(epoch)
        epoch_list = full._epoch_indices()  # world_size 1: the 23 images of the epoch
        shard_size = -(-23 // world_size)
        padded = (epoch_list * 2)[: shard_size * world_size]
        shards = []
        for rank in range(world_size):
            sampler = rfs_sampler(rank=rank, world_size=world_size)
            assert len(sampler) == shard_size
            shards.append(epoch_indices(sampler, epoch))
        assert all(len(shard) == shard_size for shard in shards)
        for rank, shard in enumerate(shards):
            assert shard == padded[rank::world_size]  # position p of the list goes to rank p % world_size
        assert collections.Counter(itertools.chain(*shards)) == collections.Counter(padded)


def test_rfs_len_is_exact_with_grouping_and_ranks():
    for batch_size, world_size, drop_last in itertools.product((1, 2, 4), (1, 2, 3), (True, False)):
        counts = set()
        for rank, epoch in itertools.product(range(world_size), range(3)):
            sampler = rfs_sampler(batch_size=batch_size, group_by_aspect_ratio=True, rank=rank,
                                  world_size=world_size, drop_last=drop_last)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            counts.add(len(batches))
        assert len(counts) == 1


def test_rfs_start_batch_resumes_the_same_epoch():
    sampler = rfs_sampler(batch_size=2, group_by_aspect_ratio=True)
    full = epoch_batches(sampler, 7)
    sampler.set_epoch(7, start_batch=5)
    assert len(sampler) == len(full) - 5 and list(sampler) == full[5:]
    assert list(sampler) == full


def test_invalid_repeat_factors():
    with pytest.raises(ValueError, match="2 repeat factors for 3 images"):
        GroupedBatchSampler([1.0] * 3, 1, repeat_factors=[1.0, 2.0])
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=">= 1"):
            GroupedBatchSampler([1.0] * 2, 1, repeat_factors=[1.0, bad])
