"""Exponential moving average of the model's weights (``runtime.ema``), used for evaluation when on.

After every optimiser step that was taken (skipped non-finite steps do not count), with t the number of
updates so far, t = 1, 2, ...:

    d_t = decay * (1 - exp(-t / warmup))         (warmup > 0; d_t = decay when warmup = 0)
    ema <- d_t * ema + (1 - d_t) * w

for every floating-point entry of the model's state dict (parameters and BatchNorm statistics alike); integer
entries (BatchNorm's batch counters) are copied. The ramp keeps the average from dwelling on the random
initial weights: d_1 is small, d_t reaches decay * (1 - e^-1) ~ 0.63 * decay at t = warmup and ~ decay a few
warmups later (Ultralytics' ramp). The averaged model starts as a copy of the model (t = 0).

Checkpoints hold it under ``"ema"`` as ``{"model": state dict (the model's keys), "updates": t, "decay",
"warmup"}``; ``publish_checkpoint`` exports that state dict instead of the raw weights when it is there.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

__all__ = ["ModelEMA", "EMA_KEY"]

logger = logging.getLogger("detector.engine")

EMA_KEY = "ema"


class ModelEMA:
    """The averaged copy of ``model`` (module docstring) and its update count.

    Args:
        model: the bare detector (not wrapped in DistributedDataParallel); copied, gradients off.
        decay: the asymptotic decay, in [0, 1).
        warmup: updates of the exponential ramp (0: the full decay from the first update).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"EMA warmup must be >= 0 updates, got {warmup}")
        self.decay, self.warmup, self.updates = float(decay), int(warmup), 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """d_t for the t-th update."""
        if self.warmup == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average toward ``model``'s current weights (same architecture as the copy)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        averaged, current, copied_to, copied_from = [], [], [], []
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                averaged.append(value)
                current.append(source[name].detach().to(value.dtype))
            else:
                copied_to.append(value)
                copied_from.append(source[name])
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)  # ema + weight * (w - ema), in one batched kernel
        for target, value in zip(copied_to, copied_from):
            target.copy_(value)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        """Restore the average and its count; a checkpoint's own decay / warmup, when they differ from this
        run's, are reported and this run's kept."""
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
        if (state.get("decay"), state.get("warmup")) != (self.decay, self.warmup):
            logger.warning("%s: EMA written with decay %s, warmup %s; continuing with runtime.ema decay %s, warmup "
                           "%s", source, state.get("decay"), state.get("warmup"), self.decay, self.warmup)

    def resume(self, checkpoint: dict, model: nn.Module, source: str) -> None:
        """Take the average from a training checkpoint; one written without EMA starts it from ``model``."""
        if isinstance(checkpoint.get(EMA_KEY), dict):
            self.load_state_dict(checkpoint[EMA_KEY], source)
            return
        logger.warning("%s holds no EMA weights (runtime.ema was off): the average starts from the resumed model",
                       source)
        self.module.load_state_dict(model.state_dict())
        self.updates = 0
