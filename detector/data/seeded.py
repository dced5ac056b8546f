"""Per-sample seeded augmentation: every training sample's randomness is a function of (seed, epoch, position).

The train transforms (random flip, multi-scale choice) draw from torch's global RNG (see
:mod:`detector.data.transforms`). Left alone, those draws depend on which DataLoader worker loads a sample
and on how many samples that worker has loaded before, so a run resumed mid-epoch, or a run with another
``data.num_workers``, augments differently. Here the batch sampler yields ``(index, sample_seed)`` pairs
(``GroupedBatchSampler(..., sample_seeds=True)``) and :class:`SeededDataset` loads ``dataset[index]`` with
torch's CPU generator, python ``random`` and NumPy's global generator all seeded from ``sample_seed``, then
puts the caller's generator states back. The sample's augmentation is then a function of
``(run seed, epoch, position in the epoch)`` only: independent of worker count, worker assignment,
prefetching, resume point, and (because the position is counted in the epoch's list before it is sharded)
of the number of processes that share the epoch.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["sample_seed", "seeded_rng", "SeededDataset"]

_SEED_DOMAIN = 0x5EED  # keeps sample seeds apart from other SeedSequence users of the same run seed


def sample_seed(run_seed: int, epoch: int, position: int) -> int:
    """A 64-bit seed for the sample at ``position`` of ``epoch`` in a run seeded with ``run_seed``.

    NumPy's ``SeedSequence`` hashes the three numbers, so neighbouring positions, epochs and run seeds give
    unrelated seeds (a plain ``seed + position`` would make epoch e, position p + 1 collide with
    epoch e + 1, position p under some schemes).
    """
    if run_seed < 0 or epoch < 0 or position < 0:
        raise ValueError(f"run_seed, epoch and position must be >= 0, got {run_seed}, {epoch}, {position}")
    words = np.random.SeedSequence([_SEED_DOMAIN, int(run_seed), int(epoch), int(position)]).generate_state(2)
    return int(words[0]) | (int(words[1]) << 32)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, python ``random`` and NumPy's global generator; restore them on exit.

    Only the CPU generator is touched (``torch.default_generator``, not ``torch.manual_seed``, which would
    also reseed every CUDA device): with ``num_workers=0`` this runs in the training process, and restoring
    the states keeps that process's random streams independent of data loading.
    """
    seed = int(seed)
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # legacy seeding takes 32-bit words
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class SeededDataset(Dataset):
    """Wrap a map-style dataset so that ``wrapper[(index, seed)]`` is ``dataset[index]`` loaded under
    :func:`seeded_rng(seed) <seeded_rng>`; a plain ``wrapper[index]`` passes through unseeded.

    Picklable (it holds only the wrapped dataset), so it works with DataLoader workers under any start method.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        if isinstance(item, tuple):
            index, seed = item
            with seeded_rng(seed):
                return self.dataset[index]
        return self.dataset[item]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"
