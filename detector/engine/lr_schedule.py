"""Iteration-indexed learning-rate schedules: a warm-up, then step decay (the papers'), cosine or linear decay.

The papers' schedule ("1x": 90k iterations at batch 16, lr divided by 10 at 60k and 80k, 500 iterations of
linear warm-up from lr/1000) is ``policy="step"``. Milestones are counted in *iterations* (optimiser steps), not
epochs; :func:`epochs_to_iters` converts epoch-based milestones (mmdetection style "epochs 8 and 11 of 12").

Every policy is a closed form in the iteration t (0-based) of a schedule of T iterations; the warm-up multiplies
the main factor (detectron2's ``WarmupParamScheduler`` form):

    lr(t) = base_lr * warmup(t) * main(t)
    warmup(t) = w + (1 - w) * t / t_w  (linear)  or  w  (constant)   for t < t_w;  1 afterwards
    main(t)   = gamma ** #{m in milestones : m <= t}                                 (step)
              = r + (1 - r) * (1 + cos(pi * t / T)) / 2                               (cosine)
              = r + (1 - r) * (1 - t / T)                                              (linear)

with w = warmup_factor, t_w = warmup_iters, r = min_lr_ratio (cosine and linear end at base_lr * r).

:class:`WarmupLR` (and :class:`WarmupMultiStepLR`, its step-policy form) subclass
``torch.optim.lr_scheduler.LRScheduler`` so that ``state_dict()`` / ``load_state_dict()`` / ``get_last_lr()``
behave like every other torch scheduler. They compute the learning rate in closed form from the iteration counter
(they are not "chainable" with other schedulers on the same optimizer), which makes resuming exact: the restored
counter alone determines the learning rate. Each parameter group keeps its own base learning rate (its ``lr``
when the scheduler is created), so per-group multipliers (a backbone at a tenth of the lr) carry through.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["POLICIES", "WARMUP_METHODS", "WarmupLR", "WarmupMultiStepLR", "epochs_to_iters", "lr_factor",
           "warmup_multistep_factor"]

POLICIES = ("step", "cosine", "linear")
WARMUP_METHODS = ("linear", "constant")


def warmup_multiplier(iteration: int, warmup_iters: int, warmup_factor: float, method: str = "linear") -> float:
    """``warmup(t)``: ``w + (1 - w) t / t_w`` (linear) or ``w`` (constant) for ``t < t_w``, else 1."""
    if warmup_iters <= 0 or iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    alpha = iteration / warmup_iters
    return warmup_factor * (1.0 - alpha) + alpha


def decay_multiplier(iteration: int, policy: str, total_iters: int, milestones: Sequence[int] = (),
                     gamma: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """``main(t)`` of the module docstring; ``t`` is clipped to ``[0, total_iters]`` for cosine and linear."""
    if policy == "step":
        return gamma ** bisect.bisect_right(milestones, iteration)
    progress = min(max(iteration, 0), total_iters) / total_iters
    if policy == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if policy == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def lr_factor(iteration: int, policy: str, total_iters: int, milestones: Sequence[int] = (), gamma: float = 0.1,
              min_lr_ratio: float = 0.0, warmup_iters: int = 0, warmup_factor: float = 1.0,
              warmup_method: str = "linear") -> float:
    """``warmup(t) * main(t)``: the multiplier of every group's base learning rate at iteration ``t``."""
    return (warmup_multiplier(iteration, warmup_iters, warmup_factor, warmup_method)
            * decay_multiplier(iteration, policy, total_iters, milestones, gamma, min_lr_ratio))


def warmup_multistep_factor(
    iteration: int,
    milestones: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_factor: float,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) for a linear warm-up then step decay:
    ``warmup(t) * gamma ** #{m in milestones : m <= t}``. ``milestones`` must be sorted in ascending order."""
    return lr_factor(iteration, "step", 1, milestones, gamma, warmup_iters=warmup_iters, warmup_factor=warmup_factor)


class WarmupLR(LRScheduler):
    """Warm-up then step, cosine or linear decay, indexed by iteration (the module docstring's equations).

    The learning rate of parameter group ``g`` during iteration ``t`` (0-based) is ``base_lr[g] * warmup(t) *
    main(t)``.

    Usage: create the scheduler after the optimizer (creation sets the iteration-0 learning rate) and call
    :meth:`step` once per iteration, *after* ``optimizer.step()``. After ``t`` calls to :meth:`step`,
    ``last_epoch == t`` (torch's name for the counter; here it counts iterations) and the optimizer holds
    the learning rate of iteration ``t``.

    Resuming: ``state_dict()`` holds only plain ints/floats/strings/lists (``torch.load(weights_only=True)``
    loads it). :meth:`load_state_dict` also writes the restored learning rate into the optimizer's parameter
    groups, so the order of ``optimizer.load_state_dict`` and ``scheduler.load_state_dict`` does not matter.

    Args:
        optimizer: the wrapped optimizer; each group's current ``lr`` becomes its base learning rate.
        policy: ``"step"``, ``"cosine"`` or ``"linear"``.
        total_iters: the schedule's length T (cosine and linear reach ``min_lr_ratio`` there).
        milestones: step policy: iterations at which the learning rate is multiplied by ``gamma``; sorted, >= 0.
        gamma: step policy: decay factor per milestone.
        min_lr_ratio: cosine and linear: the final learning rate as a fraction of the base one, in [0, 1].
        warmup_iters: length of the warm-up in iterations (0 disables it).
        warmup_factor: learning-rate multiplier during (the start of) the warm-up, in ``(0, 1]``.
        warmup_method: ``"linear"`` (rises to 1) or ``"constant"`` (stays ``warmup_factor``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, policy: str = "step", total_iters: int = 1,
                 milestones: Sequence[int] = (), gamma: float = 0.1, min_lr_ratio: float = 0.0,
                 warmup_iters: int = 500, warmup_factor: float = 0.001, warmup_method: str = "linear") -> None:
        milestones = [int(m) for m in milestones]
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"warmup_method must be one of {WARMUP_METHODS}, got {warmup_method!r}")
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        if milestones and milestones[0] < 0:
            raise ValueError(f"milestones must be >= 0, got {milestones}")
        if not 0.0 < gamma:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
        self.policy = policy
        self.total_iters = int(total_iters)
        self.milestones: list[int] = milestones
        self.gamma = float(gamma)
        self.min_lr_ratio = float(min_lr_ratio)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch=-1)

    @property
    def iteration(self) -> int:
        """The current iteration (number of :meth:`step` calls since creation)."""
        return self.last_epoch

    def lr_factor(self, iteration: int | None = None) -> float:
        """Multiplier of the base learning rate at ``iteration`` (default: the current iteration)."""
        t = self.last_epoch if iteration is None else iteration
        return lr_factor(t, self.policy, self.total_iters, self.milestones, self.gamma, self.min_lr_ratio,
                         self.warmup_iters, self.warmup_factor, self.warmup_method)

    def _get_closed_form_lr(self) -> list[float]:
        factor = self.lr_factor()
        return [float(base_lr) * factor for base_lr in self.base_lrs]

    def get_lr(self) -> list[float]:
        """Learning rates for the current iteration (closed form; called by :meth:`step`)."""
        return self._get_closed_form_lr()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule and write the restored learning rates into the optimizer."""
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self._get_closed_form_lr(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [
            group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"]
            for group in self.optimizer.param_groups
        ]


class WarmupMultiStepLR(WarmupLR):
    """Linear warm-up then multi-step decay (the papers' schedule): :class:`WarmupLR` with ``policy="step"``.

    The learning rate of parameter group ``g`` during iteration ``t`` (0-based) is::

        base_lr[g] * warmup(t) * gamma ** (number of milestones <= t)

    with ``warmup`` rising linearly from ``warmup_factor`` at ``t = 0`` to ``1`` at ``t = warmup_iters``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_iters: int = 500, warmup_factor: float = 0.001) -> None:
        super().__init__(optimizer, policy="step", milestones=milestones, gamma=gamma, warmup_iters=warmup_iters,
                         warmup_factor=warmup_factor)


def epochs_to_iters(epoch_milestones: Sequence[float], iters_per_epoch: int) -> list[int]:
    """Convert milestones given in epochs to iteration milestones.

    ``epoch_milestones`` may be fractional (e.g. ``[8, 11]`` or ``[7.5]``); each is mapped to
    ``round(epoch * iters_per_epoch)`` (Python rounding: exact halves go to the even neighbour), so that
    float error in e.g. ``0.29 * 100`` cannot move a milestone by one. The output keeps the input order.

    >>> epochs_to_iters([8, 11], iters_per_epoch=7330)
    [58640, 80630]
    """
    if iters_per_epoch <= 0:
        raise ValueError(f"iters_per_epoch must be > 0, got {iters_per_epoch}")
    for epoch in epoch_milestones:
        if epoch < 0:
            raise ValueError(f"epoch milestones must be >= 0, got {list(epoch_milestones)}")
    return [int(round(epoch * iters_per_epoch)) for epoch in epoch_milestones]
