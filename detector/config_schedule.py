"""The ``schedule`` section of the config: optimiser, learning-rate schedule, warm-up, gradient accumulation.

Defaults are the papers' recipe (SGD, momentum 0.9, step decay, linear warm-up); every other option is off by
default, so the paper configs keep their exact recipes. See README "Config reference".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass(frozen=True)
class ScheduleConfig:
    # Give the length in epochs or in iterations (set the other to null); steps are in the same unit.
    # An iteration is one optimiser step (of data.batch_size images, whatever schedule.accumulate is).
    epochs: Optional[int] = 12
    iters: Optional[int] = None
    steps: list[int] = field(default_factory=lambda: [8, 11])  # policy step only
    max_iters: Optional[int] = None  # a cap on the iterations actually run (for quick checks)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw: (beta1, beta2)
    eps: float = 1e-8  # adamw: added to sqrt(v_hat)
    # sgd: L2 penalty added to the gradient; adamw: decoupled decay, w <- w - lr * weight_decay * w.
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False  # no weight decay on normalisation layers and biases
    backbone_lr_mult: float = 1.0  # the backbone's parameters train at lr * backbone_lr_mult
    # step: lr * gamma^(milestones passed); cosine / linear: from lr down to lr * min_lr_ratio at the end.
    policy: Literal["step", "cosine", "linear"] = "step"
    gamma: float = 0.1  # policy step
    min_lr_ratio: float = 0.0  # policy cosine / linear
    # Warm-up from warmup_factor * lr, in iterations or in epochs (converted with the sampler's batches per epoch,
    # like epochs and steps; with repeat-factor sampling an epoch is the resampled list); at most one of the two
    # may be non-zero. linear: the factor rises linearly to 1; constant: it stays warmup_factor, then jumps to 1.
    warmup_iters: int = 500
    warmup_epochs: int = 0
    warmup_factor: float = 0.001
    warmup_method: Literal["linear", "constant"] = "linear"
    clip_grad_norm: Optional[float] = None
    # Gradient accumulation: each process's share of data.batch_size is split into this many micro-batches,
    # forwarded and backpropagated one after the other, then one optimiser step (less memory, same update).
    accumulate: int = 1
    # true: the losses are normalised by the whole batch's positives (one extra no-grad forward per micro-batch
    # finds them first), so the update equals the one-batch update; false: each micro-batch is normalised by its
    # own positives and the micro-batch losses are averaged (cheaper; not the same update).
    accumulate_exact: bool = True

    def __post_init__(self):
        self._check_length()
        self._check_optimizer()
        if self.policy == "step" and self.min_lr_ratio != 0.0:
            raise ValueError("schedule.min_lr_ratio applies to policy cosine and linear, not to policy step")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.gamma <= 0:
            raise ValueError(f"schedule.gamma must be > 0, got {self.gamma}")
        if self.warmup_iters < 0 or self.warmup_epochs < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError("schedule warm-up needs warmup_iters and warmup_epochs >= 0, warmup_factor in (0, 1]")
        if self.warmup_iters and self.warmup_epochs:
            raise ValueError(f"schedule.warmup_epochs ({self.warmup_epochs}) and schedule.warmup_iters "
                             f"({self.warmup_iters}) both give the warm-up length: set one of them to 0")
        if self.clip_grad_norm is not None and self.clip_grad_norm < 0:
            raise ValueError(f"schedule.clip_grad_norm must be > 0 (or null), got {self.clip_grad_norm}")
        if self.accumulate < 1:
            raise ValueError(f"schedule.accumulate must be >= 1 (micro-batches per optimiser step), got "
                             f"{self.accumulate}")

    def _check_length(self) -> None:
        if (self.epochs is None) == (self.iters is None):
            raise ValueError("schedule needs exactly one of epochs and iters (set the other to null)")
        length = self.epochs if self.epochs is not None else self.iters
        if length < 1:
            raise ValueError(f"schedule length must be >= 1, got {length}")
        if any(s < 0 or s > length for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"schedule.steps must be increasing and within the schedule, got {self.steps}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"schedule.max_iters must be >= 1, got {self.max_iters}")

    def _check_optimizer(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"schedule.lr must be > 0, got {self.lr}")
        if self.momentum < 0:
            raise ValueError(f"schedule.momentum must be >= 0, got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"schedule.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"schedule.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"schedule.eps must be > 0, got {self.eps}")
        if self.backbone_lr_mult <= 0:
            raise ValueError(f"schedule.backbone_lr_mult must be > 0 (freeze layers with "
                             f"model.backbone.frozen_stages instead), got {self.backbone_lr_mult}")
