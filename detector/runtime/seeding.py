"""Seeding, DataLoader worker seeding, and capture/restore of every random generator's state.

Seeding policy (what :func:`seed_everything` does and what it leaves to others):

* Each process seeds python ``random``, NumPy's global generator and torch (CPU and all CUDA devices) with
  ``seed + rank``. Ranks therefore draw *different* random numbers (different augmentations and different
  sampler-independent randomness), while a run with the same seed and world size is repeatable.
* Model weights still start identical on every rank: ``DistributedDataParallel`` broadcasts rank 0's
  parameters and buffers when it wraps the model, so the trainer needs no special seeding for that. (If a
  trainer wants identical random init without DDP it should seed with ``rank=0`` before building the model.)
* DataLoader workers: torch gives every worker the seed ``base_seed + worker_id`` (``base_seed`` drawn from the
  main process's torch generator, hence different per rank and per epoch) and seeds python ``random`` and
  torch with it. :func:`make_worker_init_fn` additionally reseeds python ``random`` and NumPy from that seed,
  explicitly, so augmentations built on NumPy differ across workers on every torch version.

:func:`capture_rng_state` / :func:`restore_rng_state` turn all generator states into tensors, lists, ints and
floats so they can be stored in a checkpoint that ``torch.load(weights_only=True)`` reads back.
"""

from __future__ import annotations

import functools
import os
import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "seed_everything",
    "make_worker_init_fn",
    "make_generator",
    "capture_rng_state",
    "restore_rng_state",
]

_NUMPY_SEED_MOD = 2**32  # np.random.seed accepts 32-bit seeds


def seed_everything(
    seed: int,
    rank: int = 0,
    deterministic: bool = False,
    *,
    warn_only: bool = False,
) -> int:
    """Seed python ``random``, NumPy and torch (CPU + every CUDA device) with ``seed + rank``.

    Args:
        seed: the run's base seed (``runtime.seed``).
        rank: the process's global rank; added to ``seed`` so ranks draw different random numbers.
        deterministic: if True, call ``torch.use_deterministic_algorithms(True)``, make cuDNN deterministic and
            disable its autotuner, and set ``CUBLAS_WORKSPACE_CONFIG`` (required for deterministic cuBLAS)
            unless already set. If False, deterministic algorithms are switched off again (the torch
            default) and cuDNN's autotuner setting is left as it is. Deterministic mode is slower.
        warn_only: with ``deterministic``, warn instead of raising when an op has no deterministic kernel.

    Returns:
        The effective seed ``seed + rank``.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    effective = int(seed) + int(rank)
    random.seed(effective)
    np.random.seed(effective % _NUMPY_SEED_MOD)
    torch.manual_seed(effective)  # also seeds every CUDA device (lazily if CUDA is not initialised yet)

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        torch.backends.cudnn.deterministic = False
        torch.use_deterministic_algorithms(False)
    return effective


def _seed_worker(worker_id: int, offset: int = 0) -> None:
    """Seed python ``random`` and NumPy inside a DataLoader worker from torch's per-worker seed."""
    del worker_id  # torch's worker seed already includes it
    worker_seed = (torch.initial_seed() + offset) % 2**64
    random.seed(worker_seed)
    # NumPy's legacy seeding takes 32-bit words; feed both halves so no entropy of the 64-bit seed is lost.
    np.random.seed([worker_seed & 0xFFFFFFFF, worker_seed >> 32])


def make_worker_init_fn(offset: int = 0) -> Callable[[int], None]:
    """A ``worker_init_fn`` for ``torch.utils.data.DataLoader`` that seeds ``random`` and NumPy per worker.

    Inside worker ``i`` torch's seed is ``base_seed + i``; the returned function seeds python ``random`` and
    NumPy's global generator from ``torch.initial_seed() + offset``. The result is a ``functools.partial`` of
    a module-level function, so it pickles and works with the ``spawn`` / ``forkserver`` start methods.

    Args:
        offset: optional extra offset (e.g. to decorrelate two loaders built from the same generator).
    """
    return functools.partial(_seed_worker, offset=int(offset))


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``, for ``DataLoader(generator=...)`` / samplers."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def capture_rng_state() -> dict[str, Any]:
    """The states of python ``random``, NumPy's global generator, torch CPU and every CUDA device.

    The result holds only tensors, lists, ints, floats, strings and ``None``, so it can be stored in a
    checkpoint and loaded with ``torch.load(weights_only=True)``. CUDA states are captured when CUDA has been
    initialised in this process (i.e. when it was used); otherwise ``"cuda"`` is an empty list, which avoids
    creating a CUDA context in CPU-only runs. Each process has its own state: a trainer that saves only on
    rank 0 restores rank 0's state everywhere unless it gathers the states of all ranks.
    """
    version, internal_state, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    cuda_states: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = [state.cpu() for state in torch.cuda.get_rng_state_all()]
    return {
        "python": {"version": int(version), "state": [int(x) for x in internal_state], "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": [int(x) for x in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda_states,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states produced by :func:`capture_rng_state` (possibly after a save/load round trip).

    Missing entries are skipped, so partial states work. If the checkpoint holds CUDA states for a different
    number of devices than are visible, the common devices are restored and a warning is issued.
    """
    if "python" in state:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
    if "numpy" in state:
        npy = state["numpy"]
        np.random.set_state((
            str(npy["bit_generator"]),
            np.asarray(npy["keys"], dtype=np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        ))
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(device="cpu", dtype=torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states:
        if not torch.cuda.is_available():
            warnings.warn("checkpoint has CUDA RNG states but CUDA is not available; they are ignored",
                          stacklevel=2)
            return
        num_devices = torch.cuda.device_count()
        if len(cuda_states) != num_devices:
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda_states)} devices, {num_devices} are visible; "
                "restoring the first min(...) of them",
                stacklevel=2,
            )
        for index, cuda_state in enumerate(cuda_states[:num_devices]):
            torch.cuda.set_rng_state(cuda_state.to(device="cpu", dtype=torch.uint8), index)
