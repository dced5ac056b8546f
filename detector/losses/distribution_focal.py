"""Distribution focal loss and the integral decoding of Li et al., "Generalized Focal Loss" (NeurIPS 2020).

GFL regresses each box side as a discrete distribution over reg_max + 1 bins (0, 1, ..., reg_max, in units
of the stride). The prediction is its expectation (``integral_distribution``); DFL pushes the probability
mass onto the two bins around the target, so the distribution is sharp where the target is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.losses.focal import reduce_loss
from detector.losses.quality_focal import check_reduction

__all__ = ["distribution_focal_loss", "integral_distribution"]


def _promote(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def distribution_focal_loss(logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
    """Distribution focal loss, Li et al., "Generalized Focal Loss" (NeurIPS 2020):

        y_i = floor(y),  y_{i+1} = y_i + 1,  S = softmax(logits) over the reg_max + 1 bins
        DFL(S_i, S_{i+1}) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})

    i.e. cross-entropy against the two-bin split of y, from one ``log_softmax`` and two gathers (not two
    cross-entropy calls, each of which would recompute the log-softmax). Its minimum over the logits is reached
    at S_i = y_{i+1} - y, S_{i+1} = y - y_i (0 elsewhere), whose expectation sum_k k S_k is y.

    Args:
        logits: (N, reg_max + 1) bin scores (any leading shape (..., reg_max + 1) works), any float dtype;
            the maths runs in fp32 (fp64 kept).
        targets: (N,) (or (...)) distances in [0, reg_max], in units of the stride. GFL clamps them to
            [0, reg_max - 0.1]; y = reg_max itself is accepted (all mass on the last bin). Values outside
            [0, reg_max] are not checked (that would cost a device sync) and give a meaningless loss.
        reduction: "none" -> (N,), "sum" or "mean" -> scalar.
    """
    check_reduction(reduction)
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have reg_max + 1 >= 2 bins in the last dim, got {tuple(logits.shape)}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} need targets of shape {tuple(logits.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    reg_max = logits.shape[-1] - 1
    x = _promote(logits)
    y = targets.to(x.dtype).unsqueeze(-1)  # (N, 1)
    left = y.floor().clamp_(0, reg_max - 1)  # (N, 1) y_i; y = reg_max uses the last pair of bins
    weight_right = y - left  # (N, 1) y - y_i
    left_index = left.long()
    log_probs = F.log_softmax(x, dim=-1)  # (N, reg_max + 1)
    log_pair = log_probs.gather(-1, torch.cat([left_index, left_index + 1], dim=-1))  # (N, 2)
    weights = torch.cat([1.0 - weight_right, weight_right], dim=-1)  # (N, 2) y_{i+1} - y, y - y_i
    loss = -(log_pair * weights).sum(-1)  # (N,)
    return reduce_loss(loss, reduction)


def integral_distribution(logits: Tensor) -> Tensor:
    """GFL's integral decoding (Li et al. 2020): y_hat = sum_{i=0}^{reg_max} softmax(logits)_i * i.

    Args:
        logits: (..., reg_max + 1) bin scores, any float dtype.

    Returns:
        (...) expected distances in units of the stride, fp32 (fp64 kept). Written as an elementwise product
        and sum rather than a matmul so that autocast does not lower it to fp16 / bf16.
    """
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits need a non-empty bin dimension, got {tuple(logits.shape)}")
    probs = F.softmax(_promote(logits), dim=-1)  # (..., reg_max + 1)
    bins = torch.arange(logits.shape[-1], dtype=probs.dtype, device=probs.device)  # (reg_max + 1,)
    return (probs * bins).sum(-1)
