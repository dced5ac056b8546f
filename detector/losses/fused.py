"""The fused-gradient machinery shared by the elementwise classification losses (FL, FL*, QFL, EFL).

These losses run on ``(B * A, K)`` logits, about 10M elements per step, so each is one
``torch.autograd.Function`` whose forward computes the loss and dLoss/dlogits from shared intermediates and
whose backward is a single multiply: about half the passes over memory of composing the equation from autograd
ops, and one saved tensor instead of a dozen. A loss only writes a ``terms(x, with_grad)`` function returning
``(loss, grad)``; ``fused_elementwise_loss`` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["reduce_loss", "check_reduction", "promote", "fused_elementwise_loss", "TermsFn"]

_REDUCTIONS = ("none", "sum", "mean")


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` ("none" | "sum" | "mean"); the mean of an empty tensor is 0 (not NaN)."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    raise ValueError(f"invalid reduction {reduction!r}: expected one of {_REDUCTIONS}")


# terms(x, with_grad) -> (loss, dloss/dx or None); x is fp32 (fp64 kept), targets are closed over.
TermsFn = Callable[[Tensor, bool], tuple[Tensor, Tensor | None]]


def promote(t: Tensor) -> Tensor:
    """fp16 / bf16 -> fp32; fp32 and fp64 kept (loss maths never runs in half precision)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"invalid reduction {reduction!r}: expected one of {_REDUCTIONS}")


class _FusedElementwiseLoss(torch.autograd.Function):
    """Elementwise loss whose gradient w.r.t. the logits is computed in the forward pass by ``terms``."""

    @staticmethod
    def forward(ctx, logits: Tensor, terms: TermsFn, reduction: str) -> Tensor:
        loss, grad = terms(promote(logits), True)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        ctx.reduction = reduction
        ctx.numel = loss.numel()
        return reduce_loss(loss, reduction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "mean":
            grad_output = grad_output / max(ctx.numel, 1)
        grad_logits = grad * grad_output  # grad_output: a scalar for "sum" / "mean", (..., K) for "none"
        return grad_logits.to(ctx.logits_dtype), None, None


def fused_elementwise_loss(logits: Tensor, terms: TermsFn, reduction: str) -> Tensor:
    """Evaluate ``terms`` on the fp32 (or fp64) logits and reduce; when autograd needs it, through a Function
    that saves the gradient ``terms`` computed (one full-size tensor) instead of an autograd graph."""
    check_reduction(reduction)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedElementwiseLoss.apply(logits, terms, reduction)
    loss, _ = terms(promote(logits), False)
    return reduce_loss(loss, reduction)
