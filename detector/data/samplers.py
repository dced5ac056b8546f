"""Batch samplers for training (shuffled, distributed, aspect-ratio grouped) and inference (sharded)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from detector.data.seeded import sample_seed

REPEAT_ROUNDINGS = ("stochastic", "ceil")
CEIL_TOLERANCE = 1e-9  # a repeat factor this close above an integer is that integer (float error of the sqrt)


class GroupedBatchSampler(Sampler[list[int]]):
    """Yield batches of dataset indices for one rank, grouping images of the same orientation.

    Per epoch: permute `range(len(aspect_ratios))` with a generator seeded by `seed + epoch` (the same on
    every rank), pad the permutation by repeating its head so its length divides by `world_size`, and take
    this rank's shard `indices[rank::world_size]`. With `group_by_aspect_ratio`, walk the shard and put each
    index into the bucket of its orientation (portrait/square h/w >= 1, or landscape h/w < 1); a bucket that
    reaches `batch_size` is yielded as a batch, so batched images need little padding.

    The indices left in the two buckets at the end of the shard are merged in shard order and cut into
    batches of `batch_size`: with `drop_last` a final incomplete batch is dropped, otherwise it is yielded.
    (At most one merged batch is complete and so mixes orientations.) This makes every rank yield exactly
    `shard_size // batch_size` batches (`ceil` without `drop_last`) in every epoch, whatever the permutation:
    `len()` is exact and all ranks stay in step, which DDP's collective calls require.

    `set_epoch(epoch, start_batch)` selects the permutation; the next iteration then skips the first
    `start_batch` batches of that epoch (to resume mid-epoch exactly) and resets `start_batch` to 0 (when its
    first batch is drawn: an iterator created and dropped unused, as DataLoader's worker iterator does,
    leaves `start_batch` in place).

    Repeat-factor sampling (epoch-based), with `repeat_factors` r_i (>= 1, e.g. from
    `detector.data.repeat_factors`) and one of two roundings (`repeat_rounding`):

    - "stochastic" (detectron2's RepeatFactorTrainingSampler rounding): each epoch draws, from the same
      `seed + epoch` generator on every rank, floor(r_i) copies of image i plus one more with probability
      frac(r_i), shuffles that list, and wraps or truncates it to a fixed length of round(sum_i r_i) (half
      up), the expected number of copies. Image i appears about r_i times per epoch on average over epochs.
      Truncation drops, and wrapping repeats, copies at random positions of the shuffled list, so no image is
      favoured; within one epoch an image may miss its last copy (or even its only one) to the truncation.
      (`shuffle=False` keeps the copies in index order, so the truncation then falls on the last images.)
    - "ceil" (the official EFL code's `ri_mode: ceil`): every epoch holds exactly ceil(r_i) copies of image i,
      shuffled with the `seed + epoch` generator; the epoch is that resampled list, sum_i ceil(r_i) images.
      (A factor at most 1e-9 above an integer counts as that integer, so float error in sqrt(t / f_c) never adds
      a copy.)

    The epoch list is then padded and sharded as above. So with RFS an epoch has round(sum r_i) or
    sum ceil(r_i) images instead of N (padded up to a multiple of `world_size` by repeating the head of the
    shuffled list, as without RFS), and `len()` stays the same on every rank and in every epoch, as DDP and
    per-epoch batch counting need. `epoch_size` holds the epoch's length before padding.

    Seeded samples: with `sample_seeds=True` every batch holds `(index, seed)` pairs instead of indices, where
    `seed = detector.data.seeded.sample_seed(seed, epoch, position)` and `position` is the sample's place in
    the epoch's (padded, unsharded) list, `shard_position * world_size + rank`. Wrap the dataset in
    `detector.data.seeded.SeededDataset` to make each sample's augmentation a function of
    (seed, epoch, position) only, so that it does not depend on the number of DataLoader workers, on where a
    run was resumed, or on the number of processes.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        group_by_aspect_ratio: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        repeat_factors: Sequence[float] | None = None,
        repeat_rounding: str = "stochastic",
        sample_seeds: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(aspect_ratios) == 0:
            raise ValueError("GroupedBatchSampler needs a non-empty dataset")
        if repeat_rounding not in REPEAT_ROUNDINGS:
            raise ValueError(f"repeat_rounding must be one of {REPEAT_ROUNDINGS}, got {repeat_rounding!r}")
        self.is_portrait = [float(ratio) >= 1.0 for ratio in aspect_ratios]  # h / w >= 1
        self.num_images = len(aspect_ratios)
        self.repeat_factors = None if repeat_factors is None else _check_repeat_factors(repeat_factors,
                                                                                        self.num_images)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.group_by_aspect_ratio = group_by_aspect_ratio
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.sample_seeds = sample_seeds
        self.epoch = 0
        self.start_batch = 0
        self.repeat_rounding = repeat_rounding
        self.epoch_size = self.num_images  # images per epoch before padding to a multiple of world_size
        if self.repeat_factors is not None and repeat_rounding == "ceil":
            self.ceil_copies = torch.ceil(self.repeat_factors - CEIL_TOLERANCE).long()  # (N,), >= 1
            self.epoch_size = int(self.ceil_copies.sum())
        elif self.repeat_factors is not None:
            self.epoch_size = int(math.floor(float(self.repeat_factors.sum(dtype=torch.float64)) + 0.5))
        self.shard_size = -(-self.epoch_size // world_size)  # ceil: every rank gets the same count

    @property
    def num_batches_per_epoch(self) -> int:
        """Batches a full epoch yields on this rank (the same on every rank)."""
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation; the next iteration starts at batch `start_batch` of it."""
        if not 0 <= start_batch <= self.num_batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.num_batches_per_epoch}], got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _epoch_indices(self) -> list[int]:
        """The epoch's list of image indices over all ranks (length `shard_size * world_size`)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.repeat_factors is None:
            if self.shuffle:
                indices = torch.randperm(self.num_images, generator=generator).tolist()
            else:
                indices = list(range(self.num_images))
        else:
            # numpy's repeat: torch.repeat_interleave takes milliseconds even on a few elements.
            copies = np.repeat(np.arange(self.num_images), self._copies_per_image(generator).numpy())  # (M,)
            if self.shuffle:
                copies = copies[torch.randperm(len(copies), generator=generator).numpy()]
            indices = _cycle(copies.tolist(), self.epoch_size)  # stochastic: truncate or wrap to a fixed length
        return _cycle(indices, self.shard_size * self.world_size)  # pad by repeating the head

    def _copies_per_image(self, generator: torch.Generator) -> torch.Tensor:
        """This epoch's number of copies of each image (N,): ceil(r_i), or floor(r_i) + Bernoulli(frac(r_i))."""
        if self.repeat_rounding == "ceil":
            return self.ceil_copies
        whole = torch.floor(self.repeat_factors)
        # Stochastic rounding: one extra copy with probability frac(r_i), so E[copies] = r_i.
        draws = torch.rand(self.num_images, generator=generator, dtype=torch.float64)  # (N,)
        extra = draws < self.repeat_factors - whole
        return (whole + extra).long()

    def _shard_indices(self) -> list[int]:
        return self._epoch_indices()[self.rank :: self.world_size]

    def _batch_positions(self, shard_indices: list[int]) -> list[list[int]]:
        """The epoch's batches on this rank, as positions in `shard_indices` (this rank's shard)."""
        if not self.group_by_aspect_ratio:
            leftovers = list(range(len(shard_indices)))
            batches: list[list[int]] = []
        else:
            # Buckets hold positions in the shard so that leftovers can be put back in shard order.
            buckets: dict[bool, list[int]] = {True: [], False: []}
            batches = []
            for position, index in enumerate(shard_indices):
                bucket = buckets[self.is_portrait[index]]
                bucket.append(position)
                if len(bucket) == self.batch_size:
                    batches.append(list(bucket))
                    bucket.clear()
            leftovers = sorted(buckets[True] + buckets[False])
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                batches.append(batch)
        assert len(batches) == self.num_batches_per_epoch
        return batches

    def _batches(self) -> list[list[int]]:
        shard = self._shard_indices()
        return [[shard[p] for p in batch] for batch in self._batch_positions(shard)]

    def _seeded_batches(self, start_batch: int) -> Iterator[list[tuple[int, int]]]:
        shard = self._shard_indices()  # now, not at the first next(): a later set_epoch must not leak in
        seed, epoch, rank, world_size = self.seed, self.epoch, self.rank, self.world_size
        return (  # seeds drawn lazily, batch by batch
            [(shard[p], sample_seed(seed, epoch, p * world_size + rank)) for p in batch]
            for batch in self._batch_positions(shard)[start_batch:]
        )

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        # A generator: `start_batch` is taken (and reset) at the first next(), not when iter() is called.
        # DataLoader's multi-worker iterator calls iter() twice and discards the first iterator unused,
        # which would otherwise swallow the resume position.
        start_batch, self.start_batch = self.start_batch, 0
        if self.sample_seeds:
            yield from self._seeded_batches(start_batch)
        else:
            yield from self._batches()[start_batch:]

    def __len__(self) -> int:
        """Batches the next `__iter__` yields: a full epoch, less `start_batch` when resuming."""
        return self.num_batches_per_epoch - self.start_batch


def _cycle(indices: list[int], length: int) -> list[int]:
    """`indices` cut to `length`, or repeated from its head (as many times as needed) up to `length`."""
    return [indices[i % len(indices)] for i in range(length)]


def _check_repeat_factors(repeat_factors: Sequence[float], num_images: int) -> torch.Tensor:
    """Repeat factors as a float64 tensor (N,), after checking there is one finite value >= 1 per image."""
    factors = torch.as_tensor([float(r) for r in repeat_factors], dtype=torch.float64)
    if len(factors) != num_images:
        raise ValueError(f"got {len(factors)} repeat factors for {num_images} images")
    if not bool(torch.isfinite(factors).all()) or bool((factors < 1.0).any()):
        raise ValueError("repeat factors must be finite and >= 1 (repeat-factor sampling only repeats images)")
    return factors


class InferenceSampler(Sampler[int]):
    """Split `range(size)` into `world_size` contiguous shards, without padding or duplicates.

    Shard sizes differ by at most one (the first `size % world_size` ranks get one more); the union over ranks
    is exactly `range(size)`, so gathered predictions cover every image once.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.size = int(size)
        self.rank = rank
        self.world_size = world_size
        base, extra = divmod(self.size, world_size)
        self.begin = rank * base + min(rank, extra)
        self.end = self.begin + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin
