"""FL*, the focal-loss variant of Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), appendix A.

The paper shows that the exact form of the focal term matters little: FL* reshapes the log-loss of a shifted,
sharpened sigmoid instead of multiplying by (1 - p_t)^gamma, and with gamma = 2, beta = 1 it performs close
to FL. Computed with the shared fused-gradient Function (``fused.fused_elementwise_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.losses.focal import reduce_loss
from detector.losses.fused import check_reduction, fused_elementwise_loss

__all__ = ["focal_loss_star"]


def _focal_star_terms(x: Tensor, y: Tensor, gamma: float, beta: float,
                      with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """FL* ``(..., K)`` and, if asked, dFL*/dx, with three full-size buffers.

    With y' = 2y - 1 and z = gamma x y' + beta:  L = softplus(-z) / gamma,  dL/dx = -y' sigmoid(-z).
    """
    y_sign = torch.mul(y, 2.0).sub_(1.0)  # (..., K) y'
    neg_z = torch.mul(x, y_sign).mul_(-gamma).sub_(beta)  # (..., K) -z
    loss = F.softplus(neg_z).div_(gamma)  # -log(sigmoid(z)) / gamma, stable at any |z|
    grad = y_sign.mul_(neg_z.sigmoid_()).neg_() if with_grad else None
    return loss, grad


def focal_loss_star(logits: Tensor, targets: Tensor, gamma: float = 2.0, beta: float = 1.0,
                    reduction: str = "none") -> Tensor:
    """FL*, Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), appendix A:

        y' = 2y - 1 in {-1, +1},  x_t = x y',  p*_t = sigmoid(gamma x_t + beta)
        FL* = -log(p*_t) / gamma = softplus(-(gamma x_t + beta)) / gamma

    gamma = 1, beta = 0 is plain binary cross-entropy; the paper's gamma = 2, beta = 1 performs close to FL.

    Args:
        logits: (..., K) raw class scores x, any float dtype (maths in fp32, or fp64 if given).
        targets: one-hot floats of the logits' shape (soft targets give y' in [-1, 1], the same formula).
        gamma: sharpening > 0.  beta: shift.
        reduction: "none" -> (..., K) fp32 loss, "sum" or "mean" (over all elements) -> scalar.

    Stable at any logit magnitude (log-sigmoid via softplus). The forward pass also computes the gradient;
    if ``targets`` requires grad the equation is composed from autograd ops instead.
    """
    check_reduction(reduction)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    gamma, beta = float(gamma), float(beta)
    y = targets if targets.dtype in (torch.float32, torch.float64) else targets.float()
    if torch.is_grad_enabled() and targets.requires_grad:
        x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        return reduce_loss(F.softplus(-(gamma * x * (2.0 * y - 1.0) + beta)) / gamma, reduction)
    return fused_elementwise_loss(
        logits, lambda x, with_grad: _focal_star_terms(x, y.to(x.dtype), gamma, beta, with_grad), reduction)
