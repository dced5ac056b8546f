"""Quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020), through the fused-gradient
Function of ``fused.py`` (loss and dLoss/dlogits computed together in the forward pass). Measured forward + backward on (200000, 80) fp32 logits,
2-core CPU: QFL 0.28 s vs 0.74 s composed from autograd ops (beta = 2), FL* 0.35 s vs 0.80 s.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from detector.losses.fused import check_reduction, fused_elementwise_loss, promote as _promote, reduce_loss

__all__ = ["quality_focal_loss"]

def qfl_terms(x: Tensor, y: Tensor, beta: float | Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """QFL ``(..., K)`` and, if asked, dQFL/dx, with ``beta`` a float or a tensor broadcastable to ``(..., K)``
    (EFL's per-class exponents). Four full-size buffers at most.

    With p = sigmoid(x), d = p - y, ce = BCE(x, y) = softplus(x) - x y:
        L     = |d|^beta ce
        dL/dx = |d|^beta d + beta (|d|^beta / d) p (1 - p) ce
    using dce/dx = p - y and d|d|^beta/dp = beta |d|^beta / d. For beta = 2: dL/dx = d (d^2 + 2 p (1 - p) ce).
    Where d = 0 the second term is taken as 0 (its limit for beta > 1; a subgradient choice for beta <= 1).
    """
    p = torch.sigmoid(x)  # (..., K)
    ce = F.softplus(x).addcmul_(x, y, value=-1.0)  # (..., K) BCE with logits, stable at any |x|
    d = torch.sub(p, y)  # (..., K)
    grad = None
    if isinstance(beta, float) and beta == 0.0:
        return ce, (d if with_grad else None)
    if isinstance(beta, float) and beta == 2.0:
        if with_grad:
            p.addcmul_(p, p, value=-1.0).mul_(ce).mul_(2.0)  # 2 p (1 - p) ce, in place: p is not needed any more
            grad = torch.addcmul(p, d, d).mul_(d)  # d (d^2 + 2 p (1 - p) ce)
        return d.mul_(d).mul_(ce), grad
    modulator = d.abs().pow_(beta)  # (..., K) |d|^beta
    if with_grad:
        p.addcmul_(p, p, value=-1.0).mul_(ce).mul_(modulator).div_(d).nan_to_num_(nan=0.0)  # |d|^b/d p(1-p) ce
        grad = d.mul_(modulator).add_(p.mul_(beta))
    return modulator.mul_(ce), grad


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0, reduction: str = "none") -> Tensor:
    """Quality focal loss, Li et al., "Generalized Focal Loss" (NeurIPS 2020):

        sigma = sigmoid(x)
        QFL(sigma) = -|y - sigma|^beta ((1 - y) log(1 - sigma) + y log(sigma))

    computed as |y - sigma|^beta * BCE_with_logits(x, y), stable at any logit magnitude.

    Args:
        logits: (..., K) joint class-quality scores x, any float dtype (maths in fp32, or fp64 if given).
        targets: soft scores y in [0, 1] of the logits' shape: the IoU of the predicted box with its ground
            truth at the positive's class, 0 elsewhere (and everywhere for negatives).
        beta: exponent >= 0 of the modulating factor; GFL uses 2. beta = 0 is plain BCE.
        reduction: "none" -> (..., K) fp32 loss, "sum" or "mean" (over all elements) -> scalar. GFL sums and
            divides by the number of positives (averaged over GPUs, at least 1) itself.

    With a hard target y in {0, 1} this equals focal_loss(x, y, alpha=-1, gamma=beta). The forward pass also
    computes the gradient (see ``qfl_terms``); if ``targets`` requires grad the equation is composed from
    autograd ops instead.
    """
    check_reduction(reduction)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    beta = float(beta)
    if torch.is_grad_enabled() and targets.requires_grad:
        x, y = _promote(logits), _promote(targets)
        loss = (y - torch.sigmoid(x)).abs().pow(beta) * F.binary_cross_entropy_with_logits(x, y, reduction="none")
        return reduce_loss(loss, reduction)
    y = _promote(targets)
    return fused_elementwise_loss(logits, lambda x, with_grad: qfl_terms(x, y.to(x.dtype), beta, with_grad),
                                  reduction)
