"""The device and the autocast dtype a run uses, from ``runtime.device`` and ``runtime.amp``."""

from __future__ import annotations

import logging

import torch

__all__ = ["AMP_DTYPES", "DeviceUnavailableError", "resolve_device", "resolve_amp_dtype"]

logger = logging.getLogger("detector.runtime")

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceUnavailableError(ValueError):
    """``runtime.device`` names a CUDA device this machine does not have (a config that does not fit the
    machine: the message names the key and what to set instead)."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (this process's CUDA device when CUDA is available, else the CPU), ``cpu``, ``cuda`` (the
    process's own GPU, ``local_rank``) or ``cuda:N``.

    Raises:
        DeviceUnavailableError: CUDA is asked for but not available, or the device index is not visible.
    """
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(f"runtime.device is {name!r} but CUDA is not available on this machine "
                                     "(torch.cuda.is_available() is False); set runtime.device=cpu or auto")
    device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        whose = f"process {local_rank} on this node uses" if name == "cuda" else "it names"
        raise DeviceUnavailableError(f"runtime.device is {name!r}: {whose} CUDA device {device.index}, but "
                                     f"{count} device{'s are' if count != 1 else ' is'} visible "
                                     "(see CUDA_VISIBLE_DEVICES)")
    return device


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``runtime.amp``; bf16 on a CPU without native bf16 kernels runs in fp32."""
    dtype = AMP_DTYPES[amp]
    if dtype is torch.bfloat16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("runtime.amp=bf16: this CPU has no native bf16 support (emulated bf16 is slower than "
                       "fp32); running in fp32")
        return None
    if dtype is torch.float16 and device.type == "cpu":
        raise ValueError("runtime.amp=fp16 needs a CUDA device; use bf16 or off on the CPU")
    return dtype
