"""Gradient accumulation: one optimiser step's batch forwarded and backpropagated in micro-batches.

``schedule.accumulate: N`` splits each process's share of ``data.batch_size`` into N micro-batches. The batch of
an optimiser step stays ``data.batch_size`` images (detectron2's IMS_PER_BATCH reading; mmdetection's
``cumulative_iters`` instead multiplies its per-GPU batch): the learning rate, the schedule in iterations
(= optimiser steps), epochs, logging, checkpoints and exact resume are those of the run without accumulation,
which only trades memory for time. The micro-batches are slices of the collated, padded batch, so every image
sees the same padding, anchors and augmentation as in the batch in one piece.

Why the losses need care. Every loss term is S / N: a sum over the batch divided by a normaliser that is itself
a sum over the batch (the positives N_pos, averaged over processes; ATSS's centerness sum; the EFL improved
baseline's IoU-target sum; GFL's box-weight sum).
Averaging the micro-batch losses, sum_m S_m / N_m / M, is not S / N unless every micro-batch has the same
normaliser. With ``schedule.accumulate_exact`` (the default) :class:`GradientAccumulator` therefore

  1. runs every micro-batch forward once without gradients (BatchNorm statistics put back afterwards) and adds
     up the sums behind the normalisers (:meth:`DenseDetector.loss_normaliser_sums`); one all-reduce averages
     them over processes (:meth:`DenseHead.reduce_normalisers`), giving the normalisers N of the whole batch;
  2. forwards and backpropagates each micro-batch with its losses divided by those N
     (``model(images, targets, loss_normalisers=N)``), under DDP's ``no_sync()`` except for the last, so the
     gradients are all-reduced once per step.

The accumulated gradient is then sum_m grad S_m / N = grad S / N, the gradient of the batch in one piece: the
same update up to float summation order, given layers that treat images independently (frozen BatchNorm,
GroupNorm; BatchNorm in training mode normalises each micro-batch by its own statistics, a difference no
accumulation scheme removes). EFL's gradient ratio g stays at its value of the step's start for every
micro-batch (:meth:`EqualizedFocalLoss.holding_ratio`), as for the batch in one piece. Step 1 costs one extra
forward pass per micro-batch (without gradients: about a third of a training step's compute, little memory).

``schedule.accumulate_exact: false`` skips step 1: each micro-batch is normalised by its own positives and the
micro-batch losses are averaged (mmdetection's GradientCumulativeOptimizerHook). Cheaper, not the same update
when the micro-batches hold different numbers of positives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ContextManager

import torch
from torch import Tensor, nn

from detector.losses import EqualizedFocalLoss
from detector.runtime.model_state import unwrap_model

__all__ = ["GradientAccumulator", "split_batch", "preserved_norm_statistics", "held_efl_ratios", "amp_autocast",
           "scaled_backward"]


def amp_autocast(device: torch.device, dtype: torch.dtype | None) -> Callable[[], ContextManager]:
    """Makes the autocast context of a forward pass (``runtime.amp``): none when ``dtype`` is None."""
    return lambda: torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def scaled_backward(scaler: torch.amp.GradScaler) -> Callable[[Tensor], None]:
    """``loss -> scaler.scale(loss).backward()``, holding the scaler alone (a closure over the trainer would
    keep it, its DistributedDataParallel model and the process group alive until a garbage collection)."""
    def backward(loss: Tensor) -> None:
        scaler.scale(loss).backward()
    return backward


def split_batch(images: Tensor, targets: list[dict], num_parts: int) -> list[tuple[Tensor, list[dict]]]:
    """``images`` (B, 3, H, W) and their ``targets`` cut into ``num_parts`` consecutive micro-batches of
    B / num_parts images (views of ``images``, no copy)."""
    batch = images.shape[0]
    if batch % num_parts:
        raise ValueError(f"a batch of {batch} images does not split into {num_parts} equal micro-batches "
                         "(schedule.accumulate must divide each process's share of data.batch_size)")
    size = batch // num_parts
    return [(images[start:start + size], targets[start:start + size]) for start in range(0, batch, size)]


@contextlib.contextmanager
def preserved_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Put back the running statistics of every BatchNorm-like layer on exit: a forward pass in training mode
    inside updates them, and the no-grad counting pass must leave the model as it found it."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            saved.append((module, module.running_mean.clone(), module.running_var.clone(),
                          module.num_batches_tracked.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for module, mean, var, count in saved:
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)
                module.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def held_efl_ratios(model: nn.Module) -> Iterator[None]:
    """Every EqualizedFocalLoss of ``model`` keeps its g until exit (see ``EqualizedFocalLoss.holding_ratio``)."""
    with contextlib.ExitStack() as stack:
        for module in model.modules():
            if isinstance(module, EqualizedFocalLoss):
                stack.enter_context(module.holding_ratio())
        yield


class GradientAccumulator:
    """Forward and backward of one optimiser step's batch, in ``num_micro_batches`` parts (module docstring).

    Args:
        model: the detector as the trainer steps it (bare, or wrapped in DistributedDataParallel).
        num_micro_batches: ``schedule.accumulate``.
        batch_per_process: the images each process loads per step (``data.batch_size`` / processes), which the
            micro-batches must split evenly.
        exact: ``schedule.accumulate_exact``: normalise by the whole batch's normalisers.
        autocast: makes the autocast context of a forward pass (a ``nullcontext`` without AMP).
        backward: backpropagates a loss (the trainer's ``scaler.scale(loss).backward()``).
    """

    def __init__(self, model: nn.Module, num_micro_batches: int, batch_per_process: int, exact: bool,
                 autocast: Callable[[], ContextManager], backward: Callable[[Tensor], None]) -> None:
        if num_micro_batches < 1:
            raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
        if batch_per_process % num_micro_batches:
            raise ValueError(f"schedule.accumulate ({num_micro_batches}) must divide the {batch_per_process} images "
                             "each process loads per step (data.batch_size / number of processes)")
        self.model = model
        self.num_micro_batches = int(num_micro_batches)
        self.exact = exact
        self.autocast = autocast
        self.backward = backward

    def forward_backward(self, images: Tensor, targets: list[dict]) -> tuple[dict[str, Tensor], Tensor]:
        """Backpropagate the batch's total loss into the parameters' ``.grad`` (accumulated onto whatever is
        there: zero them first). Returns the losses (detached; each micro-batch's added up, or averaged when
        not ``exact``) and their total, as the batch in one piece would give them."""
        if self.num_micro_batches == 1:
            with self.autocast():
                losses = self.model(images, targets)
            total = sum(losses.values())
            self.backward(total)
            return {key: value.detach() for key, value in losses.items()}, total.detach()
        parts = split_batch(images, targets, self.num_micro_batches)
        normalisers = self.whole_batch_normalisers(parts) if self.exact else None
        summed: dict[str, Tensor] = {}
        with held_efl_ratios(unwrap_model(self.model)):
            for index, (part_images, part_targets) in enumerate(parts):
                with self.synchronising(last=index == len(parts) - 1):
                    with self.autocast():
                        losses = self.model(part_images, part_targets, loss_normalisers=normalisers) \
                            if normalisers is not None else self.model(part_images, part_targets)
                    if normalisers is None:  # the mean of the micro-batch losses
                        losses = {key: value / self.num_micro_batches for key, value in losses.items()}
                    self.backward(sum(losses.values()))
                for key, value in losses.items():
                    summed[key] = summed[key] + value.detach() if key in summed else value.detach()
        return summed, sum(summed.values())

    def whole_batch_normalisers(self, parts: list[tuple[Tensor, list[dict]]]) -> dict[str, Tensor]:
        """The loss normalisers of all the micro-batches together (and of every process), found by a forward
        pass of each without gradients; the model's BatchNorm statistics are left as they were."""
        detector = unwrap_model(self.model)
        totals: dict[str, Tensor] = {}
        with torch.no_grad(), preserved_norm_statistics(detector):
            for part_images, part_targets in parts:
                with self.autocast():
                    sums = detector.loss_normaliser_sums(part_images, part_targets)
                for key, value in sums.items():
                    totals[key] = totals[key] + value.float() if key in totals else value.float()
        return detector.head.reduce_normalisers(totals)

    def synchronising(self, last: bool) -> ContextManager:
        """DDP all-reduces gradients in the last micro-batch's backward only (``no_sync()`` before it)."""
        if not last and isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()
