"""Equalized focal loss (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection", CVPR 2022).

On a long-tailed dataset (LVIS) the rare classes see few positives and a flood of negatives, so their
classifiers are pushed down. EFL gives every class j its own focusing exponent and weight, driven by the ratio
g_j of the accumulated positive to negative gradient magnitudes at the classification logits:

    g_j     = clamp(sum_steps sum_pos |dL/dx_j| / sum_steps sum_neg |dL/dx_j|, 0, 1)
    gamma_j = gamma_b + s (1 - g_j)         (the official code's form, not s (1 - g_j) / (1 + g_j))
    w_j     = gamma_j / gamma_b
    EFL     = -sum_j alpha_t w_j (1 - p_t)^gamma_j log(p_t)

A balanced class (g_j = 1) gets plain focal loss; a rare class (g_j -> 0) a larger exponent (easy negatives
are suppressed harder) and a larger weight (the hard positives that remain count more). The statistics are
state, so this is an ``nn.Module``: its buffers travel with ``state_dict`` into checkpoints and a resumed run
continues with the same g. The class-wise maths is fused like ``focal.py``: one Function computes the loss and
its gradient in the forward pass. Measured forward + backward on (200000, 80) fp32 logits, 2-core CPU: 0.56 s
(focal_loss: 0.46 s; the official-style composition from autograd ops: 2.2 s), plus about 0.12 s for the
gradient-statistics hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.losses.focal import reduce_loss
from detector.losses.fused import check_reduction, fused_elementwise_loss
from detector.losses.quality_focal import qfl_terms
from detector.runtime.distributed import all_reduce_sum

__all__ = ["EqualizedFocalLoss", "EqualizedQualityFocalLoss"]

_BUFFERS = ("pos_grad", "neg_grad", "pos_neg")


def _promote(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _mul_class_weight_(t: Tensor, y: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """In place t *= alpha_t w_j, alpha_t = alpha y + (1 - alpha)(1 - y) = (1 - alpha)(1 + c y) (alpha < 0: 1)."""
    if alpha < 0:
        return t.mul_(weight)
    if alpha == 1.0:
        return t.mul_(y).mul_(weight)
    return t.addcmul_(t, y, value=(2.0 * alpha - 1.0) / (1.0 - alpha)).mul_(weight * (1.0 - alpha))


def _efl_terms(x: Tensor, y: Tensor, gamma: Tensor, weight: Tensor, alpha: float,
               with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """EFL ``(..., K)`` and, if asked, dEFL/dx, with per-class ``gamma``, ``weight`` of shape (K,) (constants).

    Focal loss with a class-wise exponent: with p = sigmoid(x), q = 1 - p_t = p + y - 2 p y, s = 1 - 2y,
    ce = BCE(x, y):
        L     = alpha_t w_j q^gamma_j ce
        dL/dx = alpha_t w_j q^gamma_j [ (p - y) + gamma_j s ce p (1 - p) / q ]
    p (1 - p) / q lies in [0, 1] (q >= min(p, 1 - p)), so nothing overflows when the sigmoid saturates; where
    q = 0 it is 0 / 0 and p (1 - p) = 0, and the term's limit q^gamma_j * (...) is 0.
    """
    p = torch.sigmoid(x)  # (..., K)
    ce = F.softplus(x).addcmul_(x, y, value=-1.0)  # (..., K) BCE with logits, stable at any |x|
    q = torch.addcmul(y, p, y, value=-2.0).add_(p)  # (..., K) 1 - p_t
    grad = None
    if with_grad:
        grad = torch.sub(p, y)  # (..., K) dce/dx
        p.addcmul_(p, p, value=-1.0).div_(q).nan_to_num_(nan=0.0)  # p (1 - p) / q, in place
        p.mul_(ce).addcmul_(p, y, value=-2.0).mul_(gamma)  # gamma_j s ce p (1 - p) / q
        grad.add_(p)
    del p
    modulator = q.pow_(gamma)  # (..., K) q^gamma_j
    if grad is not None:
        _mul_class_weight_(grad.mul_(modulator), y, weight, alpha)
    return _mul_class_weight_(modulator.mul_(ce), y, weight, alpha), grad


def _weighted_qfl_terms(x: Tensor, y: Tensor, gamma: Tensor, weight: Tensor,
                        with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Equalized QFL: w_j |y - sigma|^gamma_j BCE(x, y) and its gradient (see ``qfl_terms``)."""
    loss, grad = qfl_terms(x, y, gamma, with_grad)
    if grad is not None:
        grad.mul_(weight)
    return loss.mul_(weight), grad


class EqualizedFocalLoss(nn.Module):
    """Equalized focal loss, Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection"
    (CVPR 2022), as in the official code (ModelTC/EOD):

        p = sigmoid(x),  p_t = p y + (1 - p)(1 - y),  alpha_t = alpha y + (1 - alpha)(1 - y)
        g_j = clamp(pos_grad_j / (neg_grad_j + 1e-10), 0, 1)     (the official epsilon)
        gamma_j = gamma_b + s (1 - g_j),   w_j = gamma_j / gamma_b      (detached: constants in backward)
        EFL_j = alpha_t w_j (1 - p_t)^gamma_j BCE(x, y)

    and, for heads with a joint class-quality score such as GFL's, the equalized quality focal loss
    (``quality_forward``), QFL with the exponent beta replaced by gamma_j and the same weight:

        EQFL_j = w_j |y - sigma|^gamma_j BCE(x, y),   sigma = sigmoid(x)

    With gamma_b = 2 and g = 1 the two are exactly focal_loss(alpha, 2) and quality_focal_loss(beta=2).

    Buffers (fp32, persistent, so checkpoints carry them; kept fp32 by ``.half()`` / ``.to(dtype)`` too):
        pos_grad (K,), neg_grad (K,): sum over all training steps (never reset) of |dL/dx| over the positive /
            negative entries of each class, where L is whatever the caller backpropagates (the normalised,
            weighted total loss) and x the logits passed to ``forward``. Start at 0.
        pos_neg (K,): g = their clamped ratio, recomputed after every update (inside :meth:`holding_ratio`,
            once on exit). Starts at 1, so the first step is plain focal loss with (alpha, gamma_b).

    Gradient collection: each ``forward`` / ``quality_forward`` on logits that require grad (with grad mode
    on) registers a hook on that very tensor, so it receives dL/dlogits of the tensor the caller passed (not
    an fp32 copy or any other intermediate) during backward. Positive entries are those with target > 0 (the
    one-hot 1s; with soft targets, every entry with a non-zero score), negatives the rest. (The official
    quality variant counts a positive by its label even if its IoU target is 0; here such an entry, which the
    loss treats exactly like a negative, counts as negative. Positives have IoU > 0 in practice.)
    In a distributed run the step's (2, K) sums are all-reduced (summed) over processes before accumulating,
    so every rank holds identical statistics; this is a collective inside backward, so every rank must call
    the loss the same number of times. A step whose summed gradients are not finite (a skipped fp16
    GradScaler step) adds nothing. Call the loss once per logits tensor per backward (two calls on one tensor
    would count its gradient twice); per-level calls on separate tensors are fine, their sums add up.

    Ignored anchors: multiply the "none" loss by a 0/1 mask before reducing. Their gradient is then exactly 0,
    so they add 0 to both sums: the statistics are exactly the sums over the non-ignored entries.

    Under autocast or with fp16 / bf16 logits the loss maths runs in fp32 (the official code warns that EFL
    breaks under fp16) and returns an fp32 loss; the logits' gradient has their dtype, and the hook sums it in
    fp32 into the fp32 buffers. Under a GradScaler the collected gradients carry their step's loss scale.
    """

    pos_grad: Tensor
    neg_grad: Tensor
    pos_neg: Tensor

    soft_targets = False  # one-hot targets (the classification-loss interface of loss_objects.py)
    eps = 1e-10  # the official code's guard in g = pos / (neg + eps); a class with no gradient at all gets g = 0

    def __init__(self, num_classes: int, gamma_b: float = 2.0, scale: float = 8.0, alpha: float = 0.25) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if gamma_b <= 0:
            raise ValueError(f"gamma_b must be > 0 (w_j = gamma_j / gamma_b), got {gamma_b}")
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        if alpha > 1:
            raise ValueError(f"alpha must be in [0, 1] (or < 0 to disable it), got {alpha}")
        self.num_classes = int(num_classes)
        self.gamma_b = float(gamma_b)
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.register_buffer("pos_grad", torch.zeros(num_classes, dtype=torch.float32))
        self.register_buffer("neg_grad", torch.zeros(num_classes, dtype=torch.float32))
        self.register_buffer("pos_neg", torch.ones(num_classes, dtype=torch.float32))
        self._ratio_held = False  # see holding_ratio()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma_b={self.gamma_b}, scale={self.scale}, alpha={self.alpha}"

    def _apply(self, fn, recurse=True):
        # Module.half() / .to(torch.bfloat16) would cast the statistics too; they must stay fp32.
        super()._apply(fn, recurse)
        for name in _BUFFERS:
            buffer = self._buffers[name]
            if buffer is not None and buffer.dtype != torch.float32:
                self._buffers[name] = buffer.float()
        return self

    def focusing_factors(self) -> tuple[Tensor, Tensor]:
        """Current (gamma_j, w_j), each (K,) fp32, fresh tensors outside any autograd graph."""
        with torch.no_grad():
            gamma = (1.0 - self.pos_neg).mul_(self.scale).add_(self.gamma_b)  # (K,)
            return gamma, gamma / self.gamma_b

    def forward(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        """EFL of ``logits`` (..., K) against one-hot float ``targets`` of the same shape (focal_loss's
        convention; soft targets follow the same formula). "none" -> (..., K) fp32, "sum" / "mean" -> scalar."""
        self._check_inputs(logits, targets, reduction)
        gamma, weight = self.focusing_factors()
        alpha = self.alpha
        y = _promote(targets)
        if torch.is_grad_enabled() and targets.requires_grad:
            x = _promote(logits)
            gamma, weight = gamma.to(x.dtype), weight.to(x.dtype)
            p_t = torch.sigmoid(x) * y + (1 - torch.sigmoid(x)) * (1 - y)
            alpha_t = alpha * y + (1 - alpha) * (1 - y) if alpha >= 0 else 1.0
            bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            loss = reduce_loss(alpha_t * weight * (1 - p_t).pow(gamma) * bce, reduction)
        else:
            loss = fused_elementwise_loss(
                logits,
                lambda x, with_grad: _efl_terms(x, y.to(x.dtype), gamma.to(x.dtype), weight.to(x.dtype), alpha,
                                                with_grad),
                reduction)
        self._collect_gradients(logits, targets)
        return loss

    def quality_forward(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        """Equalized QFL, w_j |y - sigmoid(x)|^gamma_j BCE(x, y), for joint class-quality heads (GFL):
        ``targets`` are soft scores in [0, 1] of the logits' shape (IoU at the positive's class, 0 elsewhere).
        Positives for the statistics: entries with target > 0."""
        self._check_inputs(logits, targets, reduction)
        gamma, weight = self.focusing_factors()
        y = _promote(targets)
        if torch.is_grad_enabled() and targets.requires_grad:
            x = _promote(logits)
            gamma, weight = gamma.to(x.dtype), weight.to(x.dtype)
            bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            loss = reduce_loss(weight * (y - torch.sigmoid(x)).abs().pow(gamma) * bce, reduction)
        else:
            loss = fused_elementwise_loss(
                logits,
                lambda x, with_grad: _weighted_qfl_terms(x, y.to(x.dtype), gamma.to(x.dtype), weight.to(x.dtype),
                                                         with_grad),
                reduction)
        self._collect_gradients(logits, targets)
        return loss

    def _check_inputs(self, logits: Tensor, targets: Tensor, reduction: str) -> None:
        check_reduction(reduction)
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape")
        if logits.dim() < 1 or logits.shape[-1] != self.num_classes:
            raise ValueError(f"logits {tuple(logits.shape)} must end in num_classes = {self.num_classes}")

    def _collect_gradients(self, logits: Tensor, targets: Tensor) -> None:
        if torch.is_grad_enabled() and logits.requires_grad:
            positive = (targets > 0).detach()  # (..., K) bool
            logits.register_hook(partial(self._accumulate, positive))

    @torch.no_grad()
    def _accumulate(self, positive: Tensor, grad: Tensor) -> None:
        """Backward hook on the caller's logits: add this step's per-class |dL/dx| sums to the buffers."""
        device = self.pos_grad.device
        magnitude = grad.detach().to(device, torch.float32).abs().reshape(-1, self.num_classes)  # (M, K), new
        positive = positive.to(device).reshape(-1, self.num_classes)  # (M, K)
        positive_part = torch.where(positive, magnitude, 0.0)  # (M, K)
        # magnitude - positive_part is exactly the negatives' magnitudes (x - x = 0 on positives).
        sums = torch.stack([positive_part.sum(0), magnitude.sub_(positive_part).sum(0)])  # (2, K)
        sums = all_reduce_sum(sums)  # summed over processes (returned as is when not distributed)
        sums = torch.where(torch.isfinite(sums).all(), sums, 0.0)  # no host sync
        self.pos_grad.add_(sums[0])
        self.neg_grad.add_(sums[1])
        if not self._ratio_held:
            self._update_ratio()

    @torch.no_grad()
    def _update_ratio(self) -> None:
        torch.clamp(self.pos_grad / (self.neg_grad + self.eps), 0.0, 1.0, out=self.pos_neg)

    @contextlib.contextmanager
    def holding_ratio(self) -> Iterator[None]:
        """Keep g (``pos_neg``) at its value on entry while backward passes inside add to ``pos_grad`` and
        ``neg_grad``; recompute it from the sums on exit. Gradient accumulation wraps one optimiser step's
        micro-batches in it, so each of them sees the g of the step's start, as the batch in one piece would, and
        the sums grow by the whole batch's gradient magnitudes. Re-entrant (only the outermost exit updates)."""
        held, self._ratio_held = self._ratio_held, True
        try:
            yield
        finally:
            self._ratio_held = held
            if not held:
                self._update_ratio()


class EqualizedQualityFocalLoss(nn.Module):
    """EFL in its quality-focal form for heads with a joint class-quality score (GFL), as a classification-loss
    object: ``soft_targets`` (IoU-valued targets), ``loss(logits, targets, reduction)`` =
    ``EqualizedFocalLoss.quality_forward``. A module holding the EFL as ``efl``, so its statistics travel in
    the state dict (``<...>.efl.pos_grad``)."""

    soft_targets = True

    def __init__(self, num_classes: int, gamma_b: float = 2.0, scale: float = 8.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.efl = EqualizedFocalLoss(num_classes, gamma_b=gamma_b, scale=scale, alpha=alpha)

    def forward(self, logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        return self.efl.quality_forward(logits, targets, reduction=reduction)
