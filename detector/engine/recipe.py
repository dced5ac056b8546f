"""The ``schedule`` section of a config mapped onto the optimizer and learning-rate scheduler constructors.

The one place where ``schedule.*`` meets :func:`~detector.engine.optim.build_optimizer` and
:class:`~detector.engine.lr_schedule.WarmupLR` (both take explicit arguments); the trainer calls these two
functions. With the defaults (``optimizer: sgd``, ``policy: step``, ``backbone_lr_mult: 1``) they build the
papers' recipe exactly as before these options existed (tests/engine/test_recipe_defaults.py checks every
shipped config against a fixture written by the earlier code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from detector.config_schema import Config
from detector.engine.lr_schedule import WarmupLR
from detector.engine.optim import build_optimizer

__all__ = ["build_training_optimizer", "build_lr_scheduler", "ScheduleLength", "schedule_length"]


def build_training_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over ``model``'s trainable parameters, grouped as ``schedule.*`` says.

    ``model`` is the bare detector (before DistributedDataParallel wraps it); with ``schedule.backbone_lr_mult``
    its ``backbone`` attribute's parameters form the backbone groups.
    """
    s = cfg.schedule
    return build_optimizer(model, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                           no_decay_norm_bias=s.no_decay_norm_bias, fused=cfg.runtime.fused_optimizer,
                           optimizer=s.optimizer, betas=(s.betas[0], s.betas[1]), eps=s.eps,
                           backbone=getattr(model, "backbone", None), backbone_lr_mult=s.backbone_lr_mult)


def build_lr_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, total_iters: int, milestones: Sequence[int],
                       warmup_iters: int) -> WarmupLR:
    """The warm-up + step / cosine / linear schedule, all lengths in iterations (optimiser steps).

    ``total_iters``, ``milestones`` and ``warmup_iters`` are ``schedule.epochs`` / ``iters``, ``steps`` and
    ``warmup_iters`` / ``warmup_epochs`` converted to iterations by the caller (the trainer knows the batches
    per epoch)."""
    s = cfg.schedule
    return WarmupLR(optimizer, policy=s.policy, total_iters=total_iters, milestones=milestones, gamma=s.gamma,
                    min_lr_ratio=s.min_lr_ratio, warmup_iters=warmup_iters, warmup_factor=s.warmup_factor,
                    warmup_method=s.warmup_method)


@dataclass
class ScheduleLength:
    iters_per_epoch: int
    total_iters: int      # the schedule's full length
    run_iters: int        # what this run executes (capped by schedule.max_iters)
    milestones: list[int]
    warmup_iters: int     # schedule.warmup_iters, or schedule.warmup_epochs * iters_per_epoch


def schedule_length(cfg: Config, iters_per_epoch: int) -> ScheduleLength:
    """``schedule.epochs`` / ``iters``, ``steps``, ``max_iters`` and the warm-up in iterations (optimiser steps)."""
    s = cfg.schedule
    unit = iters_per_epoch if s.epochs is not None else 1
    total = (s.epochs if s.epochs is not None else s.iters) * unit
    run = min(total, s.max_iters) if s.max_iters is not None else total
    warmup = s.warmup_epochs * iters_per_epoch if s.warmup_epochs else s.warmup_iters
    return ScheduleLength(iters_per_epoch, total, run, [step * unit for step in s.steps], warmup)
