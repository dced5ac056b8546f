"""Tests for detector.runtime.seeding: seed_everything, DataLoader worker seeding, generators."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from detector.runtime.seeding import make_generator, make_worker_init_fn, seed_everything


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_same_seed_same_draws_and_rank_changes_them():
    assert seed_everything(42) == 42
    first = _draws()
    seed_everything(42)
    assert _draws() == first
    assert seed_everything(42, rank=1) == 43
    other_rank = _draws()
    assert all(a != b for a, b in zip(first, other_rank))


def test_deterministic_flag_toggles_torch_setting():
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_invalid_seed():
    with pytest.raises(ValueError):
        seed_everything(-1)


class RandomDraws(Dataset):
    """Each item reports the worker's python / NumPy / torch draws."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        return torch.tensor([info.id, random.random(), np.random.rand(), torch.rand(())], dtype=torch.float64)


def _collect(seed):
    loader = DataLoader(RandomDraws(), batch_size=1, num_workers=2, worker_init_fn=make_worker_init_fn(),
                        generator=make_generator(seed))
    return torch.cat(list(loader))  # (4, 4): rows alternate worker 0 / worker 1


def test_worker_init_fn_gives_distinct_reproducible_worker_streams():
    run_a = _collect(seed=5)
    run_b = _collect(seed=5)
    run_c = _collect(seed=6)
    assert torch.equal(run_a, run_b)  # reproducible from the loader's generator
    worker0, worker1 = run_a[run_a[:, 0] == 0], run_a[run_a[:, 0] == 1]
    assert worker0.shape[0] == worker1.shape[0] == 2
    # python random and NumPy differ across workers (NumPy is what seeding guards against duplicating)
    assert not torch.equal(worker0[:, 1:], worker1[:, 1:])
    assert (worker0[:, 2] != worker1[:, 2]).all()
    assert not torch.equal(run_a[:, 1:], run_c[:, 1:])  # another seed gives other augmentations


def test_worker_seed_function_matches_torch_initial_seed(monkeypatch):
    monkeypatch.setattr(torch, "initial_seed", lambda: 2**40 + 7)
    make_worker_init_fn()(0)
    value = np.random.rand()
    np.random.seed([(2**40 + 7) & 0xFFFFFFFF, (2**40 + 7) >> 32])
    assert np.random.rand() == value
    make_worker_init_fn(offset=1)(0)
    random_value = random.random()
    random.seed(2**40 + 8)
    assert random.random() == random_value


def test_make_generator_is_seeded():
    assert torch.equal(torch.rand(3, generator=make_generator(3)), torch.rand(3, generator=make_generator(3)))
