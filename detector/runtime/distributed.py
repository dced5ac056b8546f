"""Thin helpers over ``torch.distributed`` for torchrun-launched data-parallel training.

Launch with ``torchrun --nproc_per_node=N tools/train.py ...``: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`init_distributed` joins the process group through
the ``env://`` rendezvous. Launched as a plain ``python`` process, everything here degrades to single-process
no-ops, so the trainer has a single code path.

Collectives go through the device the backend needs: CUDA tensors for NCCL (CPU inputs are moved to the
current CUDA device and the result moved back), CPU tensors for gloo.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "destroy_distributed",
    "process_group",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "all_reduce_mean",
    "reduce_loss_dict",
    "PeerProcessFailed",
    "on_main_process",
    "is_peer_failure",
]

T = TypeVar("T")

_REQUIRED_ENV = ("MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from error


def init_distributed(
    backend: str | None = None,
    *,
    timeout: datetime.timedelta | None = None,
) -> tuple[int, int, int]:
    """Join the torchrun process group if this process was launched distributed.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ... ; ``None`` picks NCCL when CUDA is available, else gloo.
        timeout: collective timeout passed to ``init_process_group`` (torch's default when ``None``).

    Returns:
        ``(rank, world_size, local_rank)``. ``(0, 1, 0)`` when ``WORLD_SIZE`` is unset or 1 (no process group
        is created). When CUDA is available the current CUDA device is set to ``local_rank`` in every case,
        before the group is created, so NCCL binds each process to its own GPU. Calling it again after the
        group exists returns the current values.

    Raises:
        ValueError: ``RANK``/``WORLD_SIZE`` are inconsistent or ``MASTER_ADDR``/``MASTER_PORT`` are missing.
    """
    if is_distributed():
        return get_rank(), get_world_size(), get_local_rank()

    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local_rank = _env_int("LOCAL_RANK", rank % num_gpus if num_gpus else 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world_size}")
    if num_gpus:
        if local_rank >= num_gpus:
            raise ValueError(f"LOCAL_RANK={local_rank} but only {num_gpus} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
    if world_size == 1:
        return 0, 1, 0

    missing = [name for name in _REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with torchrun")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support")
    if backend is None:
        backend = "nccl" if num_gpus else "gloo"

    kwargs = {}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if backend == "nccl" and num_gpus:
        # Binds the communicator to this GPU eagerly (and silences barrier()'s "device unknown" warning).
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size, **kwargs)
    return rank, world_size, local_rank


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """:func:`init_distributed` for a command's lifetime, and the group destroyed on every way out.

    A process that exits with its gloo group alive while a peer still works (rank 0 scoring, say) can abort at
    interpreter shutdown ("terminate called without an active exception"), so every command that joins the
    group leaves it explicitly."""
    init_distributed()
    try:
        yield
    finally:
        destroy_distributed()


def destroy_distributed() -> None:
    """Tear down the process group if one exists (safe to call when not distributed).

    Collects garbage first: a DistributedDataParallel model left in a reference cycle keeps the group alive,
    and freeing it only while the interpreter shuts down can abort the process (gloo's threads outlive it)."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """Rank on this machine, from torchrun's ``LOCAL_RANK`` (0 when not set)."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on global rank 0 (and in single-process runs): the process that logs and saves."""
    return get_rank() == 0


def _uses_nccl() -> bool:
    return is_distributed() and dist.get_backend() == "nccl"


def _comm_device() -> torch.device:
    """Device on which the active backend reduces tensors."""
    if _uses_nccl():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")  # gloo (and mpi) reduce host tensors


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if get_world_size() == 1:
        return
    if _uses_nccl():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over all processes.

    Returns a new tensor on ``tensor``'s device; the input is not modified. When not distributed the input
    itself is returned, so treat the result as read-only.
    """
    if get_world_size() == 1:
        return tensor
    reduced = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``tensor`` over all processes (integer inputs give a float result).

    Same aliasing rule as :func:`all_reduce_sum`.
    """
    world_size = get_world_size()
    if world_size == 1:
        return tensor
    if not (tensor.is_floating_point() or tensor.is_complex()):
        tensor = tensor.to(torch.get_default_dtype())
    return all_reduce_sum(tensor) / world_size


def reduce_loss_dict(loss_dict: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Average scalar losses over all processes, for logging.

    All values are stacked into one float32 vector (keys in sorted order, so ranks agree even if they built
    their dicts in a different order) and reduced with a single ``all_reduce``; the result is copied to the
    host once. Every rank must pass the same keys. Gradients are not involved (values are detached).

    Returns:
        ``{key: mean over ranks}`` as Python floats, in the input's key order.
    """
    if not loss_dict:
        return {}
    keys = sorted(loss_dict)
    values = []
    for key in keys:
        value = loss_dict[key]
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        if value.numel() != 1:
            raise ValueError(f"loss {key!r} has shape {tuple(value.shape)}, expected a scalar")
        values.append(value.reshape(()).float())
    # Stack on the device the losses live on (a CUDA device if any), so the host copy happens once.
    device = next((value.device for value in values if value.device.type != "cpu"), torch.device("cpu"))
    stacked = torch.stack([value.to(device) for value in values])  # (num_losses,)
    averaged = all_reduce_mean(stacked).tolist()
    by_key = dict(zip(keys, averaged, strict=True))
    return {key: by_key[key] for key in loss_dict}


class PeerProcessFailed(RuntimeError):
    """Another process of the run failed and reports its own error; this one stops without one of its own."""


def on_main_process(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on the main process only; every process then goes on, or stops, together (collective).

    Returns ``fn()``'s result on the main process (None elsewhere). When ``fn`` raises, the main process
    re-raises its exception (and reports it) and the others raise :class:`PeerProcessFailed` instead of
    waiting at the next collective for a process that is gone.
    """
    if get_world_size() == 1:
        return fn()
    result, failure = None, None
    if is_main_process():
        try:
            result = fn()
        except BaseException as error:  # shared with the others below, then re-raised
            failure = error
    outcome = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    if outcome[0] is not None:
        raise PeerProcessFailed(f"process 0 stopped ({outcome[0]})")
    return result


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` only says that another process of the group went away (a collective failed on a closed
    connection: that process reports what went wrong), rather than what went wrong."""
    if isinstance(error, PeerProcessFailed):
        return True
    if not is_distributed():
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text for mark in ("/gloo/", "Connection reset by peer", "Connection closed by peer", "NCCL"))
