"""RetinaNet Fig. 1 (Lin et al., "Focal Loss for Dense Object Detection", 2017): loss vs p_t.

For the probability of the ground-truth class p_t (p_t = p for y = 1, 1 - p for y = 0), without the alpha
balance (as in the figure):

    CE(p_t) = -log(p_t)                          (gamma = 0)
    FL(p_t) = -(1 - p_t)^gamma log(p_t)

The curves are evaluated with :func:`detector.losses.focal_loss` itself (alpha < 0 disables alpha_t), on the
logit x = log(p_t / (1 - p_t)) with target 1, so the figure shows the loss the detectors train with. The
paper shades p_t > 0.5 as "well-classified examples": FL with gamma > 0 cuts their loss the most.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from detector.analysis.plotting import COLOURS, new_figure, save_png
from detector.losses import focal_loss

WELL_CLASSIFIED_PT = 0.5  # the paper's figure marks p_t > 0.5 as well classified


def focal_loss_curve(p_t: np.ndarray, gamma: float) -> np.ndarray:
    """FL(p_t) = -(1 - p_t)^gamma log(p_t) for an array of p_t in (0, 1], via detector.losses.focal_loss.

    p_t = 1 gives 0; p_t = 0 would be infinite and is refused.
    """
    p_t = np.asarray(p_t, dtype=np.float64)
    if p_t.size and (p_t.min() <= 0.0 or p_t.max() > 1.0):
        raise ValueError(f"p_t must lie in (0, 1], got values in [{p_t.min()}, {p_t.max()}]")
    p = torch.from_numpy(p_t)
    logits = torch.logit(p)  # inf at p_t = 1: the loss there is exactly 0, set below
    logits = torch.where(torch.isinf(logits), torch.full_like(logits, 80.0), logits)  # (N,)
    loss = focal_loss(logits, torch.ones_like(logits), alpha=-1.0, gamma=float(gamma), reduction="none")
    return loss.double().numpy()


def plot_focal_loss(gammas: Sequence[float], out: str | os.PathLike, num_points: int = 400) -> Path:
    """Draw Fig. 1: one curve per gamma over p_t in [0.002, 1], y limited to [0, 5] as in the paper."""
    if not gammas:
        raise ValueError("give at least one gamma")
    p_t = np.linspace(0.002, 1.0, num_points)
    figure, (axes,) = new_figure(1, width_per_panel=6.0, height=4.5)
    axes.axvspan(WELL_CLASSIFIED_PT, 1.0, color="0.92", zorder=0)
    axes.text(0.75, 3.2, "well-classified\nexamples", ha="center", va="center", fontsize=10)
    axes.annotate("", xy=(0.98, 2.8), xytext=(0.52, 2.8), arrowprops=dict(arrowstyle="<->", color="0.3"))
    for index, gamma in enumerate(gammas):
        label = f"$\\gamma$ = {gamma:g}" + (" (CE)" if gamma == 0 else "")
        axes.plot(p_t, focal_loss_curve(p_t, gamma), color=COLOURS[index % len(COLOURS)], lw=2, label=label)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 5.0)
    axes.set_xlabel("probability of ground truth class $p_t$")
    axes.set_ylabel("loss")
    axes.set_title("CE and focal loss $-(1-p_t)^\\gamma \\log p_t$ (no $\\alpha$)")
    axes.legend(loc="upper right")
    return save_png(figure, out)
