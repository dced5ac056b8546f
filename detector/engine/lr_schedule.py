"""Iteration-indexed learning-rate schedule: linear warm-up followed by step decay.

This is the schedule of the RetinaNet / ATSS / GFL papers ("1x": 90k iterations at batch 16, lr divided by 10
at 60k and 80k, 500 iterations of linear warm-up from lr/1000). Milestones are counted in *iterations*, not
epochs; :func:`epochs_to_iters` converts epoch-based milestones (mmdetection style "epochs 8 and 11 of 12").

:class:`WarmupMultiStepLR` subclasses ``torch.optim.lr_scheduler.LRScheduler`` so that ``state_dict()`` /
``load_state_dict()`` / ``get_last_lr()`` behave like every other torch scheduler. It computes the learning
rate in closed form from the iteration counter (it is not "chainable" with other schedulers on the same
optimizer), which makes resuming exact: the restored counter alone determines the learning rate.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from detector.config_schema import Config

__all__ = ["WarmupMultiStepLR", "epochs_to_iters", "warmup_multistep_factor", "ScheduleLength", "schedule_length"]


def warmup_multistep_factor(
    iteration: int,
    milestones: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_factor: float,
) -> float:
    """Multiplier applied to the base learning rate at ``iteration`` (0-based).

    ``factor(t) = warmup(t) * gamma ** #{m in milestones : m <= t}`` with the linear warm-up
    ``warmup(t) = warmup_factor + (1 - warmup_factor) * t / warmup_iters`` for ``t < warmup_iters``
    and ``1`` afterwards. ``milestones`` must be sorted in ascending order.
    """
    if warmup_iters > 0 and iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warmup = warmup_factor * (1.0 - alpha) + alpha
    else:
        warmup = 1.0
    num_decays = bisect.bisect_right(milestones, iteration)
    return warmup * gamma**num_decays


class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up then multi-step decay, indexed by iteration.

    The learning rate of parameter group ``g`` during iteration ``t`` (0-based) is::

        base_lr[g] * warmup(t) * gamma ** (number of milestones <= t)

    with ``warmup`` rising linearly from ``warmup_factor`` at ``t = 0`` to ``1`` at ``t = warmup_iters``.

    Usage: create the scheduler after the optimizer (creation sets the iteration-0 learning rate) and call
    :meth:`step` once per iteration, *after* ``optimizer.step()``. After ``t`` calls to :meth:`step`,
    ``last_epoch == t`` (torch's name for the counter; here it counts iterations) and the optimizer holds
    the learning rate of iteration ``t``.

    Resuming: ``state_dict()`` holds only plain ints/floats/lists (``torch.load(weights_only=True)`` loads
    it). :meth:`load_state_dict` also writes the restored learning rate into the optimizer's parameter
    groups, so the order of ``optimizer.load_state_dict`` and ``scheduler.load_state_dict`` does not matter.

    Args:
        optimizer: the wrapped optimizer; each group's current ``lr`` becomes its base learning rate.
        milestones: iterations at which the learning rate is multiplied by ``gamma``; sorted, non-negative.
        gamma: decay factor per milestone.
        warmup_iters: length of the linear warm-up in iterations (0 disables it).
        warmup_factor: learning-rate multiplier at iteration 0, in ``(0, 1]``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_factor: float = 0.001,
    ) -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        if milestones and milestones[0] < 0:
            raise ValueError(f"milestones must be >= 0, got {milestones}")
        if not 0.0 < gamma:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
        self.milestones: list[int] = milestones
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        super().__init__(optimizer, last_epoch=-1)

    @property
    def iteration(self) -> int:
        """The current iteration (number of :meth:`step` calls since creation)."""
        return self.last_epoch

    def lr_factor(self, iteration: int | None = None) -> float:
        """Multiplier of the base learning rate at ``iteration`` (default: the current iteration)."""
        t = self.last_epoch if iteration is None else iteration
        return warmup_multistep_factor(t, self.milestones, self.gamma, self.warmup_iters, self.warmup_factor)

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


@dataclass
class ScheduleLength:
    iters_per_epoch: int
    total_iters: int      # the schedule's full length
    run_iters: int        # what this run executes (capped by schedule.max_iters)
    milestones: list[int]
    warmup_iters: int     # schedule.warmup_iters, or schedule.warmup_epochs * iters_per_epoch


def schedule_length(cfg: Config, iters_per_epoch: int) -> ScheduleLength:
    """The run's length in iterations: ``schedule.iters`` or ``schedule.epochs`` (with ``schedule.steps`` and
    ``schedule.warmup_epochs``) at ``iters_per_epoch``, capped by ``schedule.max_iters``."""
    s = cfg.schedule
    unit = iters_per_epoch if s.epochs is not None else 1
    total = (s.epochs if s.epochs is not None else s.iters) * unit
    run = min(total, s.max_iters) if s.max_iters is not None else total
    warmup = s.warmup_epochs * iters_per_epoch if s.warmup_epochs else s.warmup_iters
    return ScheduleLength(iters_per_epoch, total, run, [step * unit for step in s.steps], warmup)
