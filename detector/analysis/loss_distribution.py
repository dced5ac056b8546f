"""RetinaNet Fig. 4 (Lin et al. 2017): cumulative distribution of the normalised focal loss.

The paper takes a converged model, samples the predicted probability of ~10^7 negative and ~10^5 positive
"windows" (anchors) of a set of images, computes FL at several gamma on those same probabilities, and, for
positives and negatives separately, sorts the losses, normalises them to sum to 1 and plots the cumulative
sum against the fraction of samples. Its readings: about 20% of the hardest positives carry roughly half of
the positive loss whatever gamma; for negatives, gamma = 2 concentrates nearly all the loss on a small
fraction of samples (the easy negatives are suppressed).

Samples here (see :func:`collect_classification_logits`): the model runs in eval mode over images with their
ground truths; anchors are assigned exactly as in training (the model's own assigner on its
``dense_outputs``, batched, ignore codes respected). Then

  - positives: the logit of the ground-truth class at every positive anchor (y = 1);
  - negatives: with ``negatives="all_classes"`` (default) every class logit of every background anchor
    (y = 0). The detectors use per-class sigmoids, so the loss is a sum over (anchor, class) pairs and each
    pair is one binary sample: this is the population FL actually sums. The paper does not say whether its
    ~10^7 negatives are windows or window-class pairs; on COCO, 10^7 pairs is ~10^5 windows x 80 classes at
    its ~100:1 negative:positive window ratio, so pairs also match its counts. ``negatives="max_class"``
    keeps one sample per background window instead (its highest logit, the class most likely to be a false
    positive). The non-ground-truth classes of positive anchors are left out in both modes: they are neither
    positive nor background windows.
  - ``max_negatives`` (10^7 by default, the paper's count) caps the negatives by a seeded uniform subsample
    drawn while streaming, so memory stays bounded on a large val set.

With p = sigmoid(x) and p_t = p for positives, 1 - p for negatives, each sample's loss at gamma is
FL = -(1 - p_t)^gamma log(p_t) (no alpha: a constant per population, it cancels in the normalisation),
computed with :func:`detector.losses.focal_loss` (alpha < 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from detector.analysis.batches import first_images
from detector.analysis.plotting import COLOURS, new_figure, save_png
from detector.assigners import BACKGROUND, assign_targets
from detector.losses import focal_loss

NEGATIVE_MODES = ("all_classes", "max_class")
PAPER_POSITIVE_FRACTION = 0.20  # "the hardest 20% of the positive samples"
PAPER_NEGATIVE_FRACTION = 0.05  # a small fraction of the hardest negatives


@dataclass
class ClassificationSamples:
    positive_logits: Tensor  # (P,) ground-truth class logit of each positive anchor
    negative_logits: Tensor  # (M,) background logits (anchor-class pairs, or one per anchor)
    num_images: int
    num_negative_total: int  # before the max_negatives subsample


def split_logits(pred_logits: Tensor, assigned: Tensor, gt_labels: Tensor,
                 negatives: str = "all_classes") -> tuple[Tensor, Tensor]:
    """Positive and negative logits of one batch.

    Args:
        pred_logits: (B, N, K) class logits.
        assigned: (B, N) assigner codes (gt index >= 0, -1 background, -2 ignored).
        gt_labels: (B, G) class of each (padded) ground truth.
        negatives: "all_classes" (every class of background anchors) or "max_class" (one per anchor).
    Returns:
        (P,) logits of the gt class at positives, (M,) negative logits.
    """
    if negatives not in NEGATIVE_MODES:
        raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
    positive = assigned >= 0  # (B, N)
    batch_idx, anchor_idx = positive.nonzero(as_tuple=True)  # (P,)
    pos_labels = gt_labels[batch_idx, assigned[batch_idx, anchor_idx]]  # (P,)
    pos_logits = pred_logits[batch_idx, anchor_idx, pos_labels]  # (P,)
    background = pred_logits[assigned == BACKGROUND]  # (M_anchors, K)
    neg_logits = background.reshape(-1) if negatives == "all_classes" else background.amax(dim=1)
    return pos_logits.float(), neg_logits.float()


class StreamSubsample:
    """A uniform random sample without replacement of at most ``capacity`` values from a stream of chunks.

    Every value gets an independent uniform key; the values with the ``capacity`` smallest keys are kept
    (bottom-k sampling), so every subset of that size is equally likely and memory stays O(capacity +
    chunk) however many images are scanned. ``capacity=None`` keeps everything.
    """

    def __init__(self, capacity: int | None, seed: int = 0):
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1 or None, got {capacity}")
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.values: list[Tensor] = []
        self.keys = torch.zeros(0)
        self.num_seen = 0

    def add(self, chunk: Tensor) -> None:
        chunk = chunk.reshape(-1)
        self.num_seen += chunk.numel()
        self.values.append(chunk)
        if self.capacity is None:
            return
        self.keys = torch.cat([self.keys, torch.rand(chunk.numel(), generator=self.generator)])
        if self.keys.numel() > self.capacity:
            kept = self.keys.topk(self.capacity, largest=False, sorted=False).indices
            self.values, self.keys = [torch.cat(self.values)[kept]], self.keys[kept]

    def result(self) -> Tensor:
        return torch.cat(self.values) if self.values else torch.zeros(0)


@torch.no_grad()
def collect_classification_logits(model: nn.Module, batches: Iterable[tuple[Tensor, list[dict]]],
                                  device: torch.device, max_images: int | None = None,
                                  negatives: str = "all_classes", max_negatives: int | None = 10**7,
                                  seed: int = 0) -> ClassificationSamples:
    """Run ``model`` (eval mode) over ``(images, targets)`` batches and gather positive / negative logits.

    Negatives beyond ``max_negatives`` are subsampled uniformly as they stream in (:class:`StreamSubsample`).
    """
    model.eval()
    positives, negative_sample, num_images = [], StreamSubsample(max_negatives, seed), 0
    for images, targets in first_images(batches, max_images):
        outputs = model.dense_outputs(images.to(device))
        targets = [{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
        gt, assigned = assign_targets(model.head.assigner, outputs.anchors, outputs.num_anchors_per_level, targets)
        pos, neg = split_logits(outputs.pred_logits, assigned, gt.labels, negatives)
        positives.append(pos.cpu())
        negative_sample.add(neg.cpu())
        num_images += len(targets)
    return ClassificationSamples(torch.cat(positives), negative_sample.result(), num_images,
                                 negative_sample.num_seen)


def focal_losses(logits: Tensor, positive: bool, gamma: float) -> np.ndarray:
    """FL = -(1 - p_t)^gamma log(p_t) per sample (no alpha), y = 1 for positives and 0 for negatives."""
    targets = torch.full_like(logits, 1.0 if positive else 0.0)
    return focal_loss(logits, targets, alpha=-1.0, gamma=float(gamma), reduction="none").double().numpy()


def cumulative_loss_curve(losses: np.ndarray, num_points: int = 501) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of samples, cumulative normalised loss) with the losses sorted ascending.

    With l_(1) <= ... <= l_(n) and L = sum l, the curve passes through (i / n, sum_{j<=i} l_(j) / L) for
    i = 0..n; it is read off at ``num_points`` evenly spaced fractions (linear between samples).
    """
    losses = np.sort(np.asarray(losses, dtype=np.float64).reshape(-1))
    if losses.size == 0:
        raise ValueError("no loss values")
    if (losses < 0).any() or not np.isfinite(losses).all():
        raise ValueError("loss values must be finite and >= 0")
    total = losses.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(losses)]) / (total if total > 0 else 1.0)
    sample_fraction = np.arange(losses.size + 1) / losses.size
    fractions = np.linspace(0.0, 1.0, num_points)
    return fractions, np.interp(fractions, sample_fraction, cumulative)


def hardest_loss_share(losses: np.ndarray, fraction: float) -> float:
    """Share of the total loss carried by the hardest ``fraction`` of the samples.

    The hardest k = round(fraction * n) samples (k >= 1 when fraction > 0) are those with the largest loss:
    share = sum of the k largest losses / sum of all losses (0 when every loss is 0).
    """
    losses = np.asarray(losses, dtype=np.float64).reshape(-1)
    if losses.size == 0:
        raise ValueError("no loss values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    total = losses.sum()
    count = int(round(fraction * losses.size))
    if fraction > 0:
        count = max(count, 1)
    if count == 0 or total <= 0:
        return 0.0
    return float(np.sort(losses)[losses.size - count:].sum() / total)


@dataclass
class Reading:
    gamma: float
    positive_share: float  # of the positive loss, from the hardest PAPER_POSITIVE_FRACTION of positives
    negative_share: float  # of the negative loss, from the hardest PAPER_NEGATIVE_FRACTION of negatives


def loss_distribution_readings(samples: ClassificationSamples, gammas: Sequence[float],
                               num_points: int = 501) -> tuple[list[Reading], dict]:
    """Per gamma, the paper's two readings and both cumulative curves ({gamma: (x, pos_y, neg_y)})."""
    if samples.positive_logits.numel() == 0 or samples.negative_logits.numel() == 0:
        raise ValueError(f"need positives and negatives; got {samples.positive_logits.numel()} positives and "
                         f"{samples.negative_logits.numel()} negatives over {samples.num_images} images")
    readings, curves = [], {}
    for gamma in gammas:
        pos = focal_losses(samples.positive_logits, True, gamma)
        neg = focal_losses(samples.negative_logits, False, gamma)
        readings.append(Reading(float(gamma), hardest_loss_share(pos, PAPER_POSITIVE_FRACTION),
                                hardest_loss_share(neg, PAPER_NEGATIVE_FRACTION)))
        x, pos_y = cumulative_loss_curve(pos, num_points)
        _, neg_y = cumulative_loss_curve(neg, num_points)
        curves[float(gamma)] = (x, pos_y, neg_y)
    return readings, curves


def format_readings(readings: Sequence[Reading]) -> str:
    lines = [f"{'gamma':>6}  {'hardest 20% of positives':>26}  {'hardest 5% of negatives':>25}"]
    for r in readings:
        lines.append(f"{r.gamma:>6g}  {100 * r.positive_share:>24.1f} %  {100 * r.negative_share:>23.1f} %")
    return "\n".join(lines)


def plot_loss_distribution(curves: dict, samples: ClassificationSamples, out: str | os.PathLike,
                           title: str = "") -> Path:
    """Draw Fig. 4: cumulative normalised loss vs fraction of samples, positives and negatives panels."""
    figure, (pos_axes, neg_axes) = new_figure(2, width_per_panel=5.0, height=4.2)
    for index, (gamma, (x, pos_y, neg_y)) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        pos_axes.plot(x, pos_y, color=colour, lw=2, label=f"$\\gamma$ = {gamma:g}")
        neg_axes.plot(x, neg_y, color=colour, lw=2, label=f"$\\gamma$ = {gamma:g}")
    counts = (f"{samples.positive_logits.numel():,} positives", f"{samples.negative_logits.numel():,} negatives")
    for axes, name, count in ((pos_axes, "positive", counts[0]), (neg_axes, "negative", counts[1])):
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"fraction of {name} samples")
        axes.set_ylabel("cumulative normalized loss")
        axes.set_title(f"{name} samples ({count}, {samples.num_images} images)", fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left")
    if title:
        figure.suptitle(title)
    return save_png(figure, out)


def num_samples_text(samples: ClassificationSamples) -> str:
    sub = "" if samples.num_negative_total == samples.negative_logits.numel() else \
        f" (a seeded sample of {samples.num_negative_total:,})"
    return (f"{samples.num_images} images: {samples.positive_logits.numel():,} positives, "
            f"{samples.negative_logits.numel():,} negatives{sub}")


__all__ = ["ClassificationSamples", "Reading", "StreamSubsample", "collect_classification_logits",
           "cumulative_loss_curve", "dense_outputs", "focal_losses", "format_readings", "hardest_loss_share",
           "loss_distribution_readings", "num_samples_text", "plot_loss_distribution", "split_logits"]
