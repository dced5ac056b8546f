"""GFL Fig. 2 (Li et al., "Generalized Focal Loss", NeurIPS 2020): predicted score vs localization quality.

GFL argues that a separately trained classification score ranks boxes poorly because it correlates weakly
with their IoU, and that the joint class-IoU score of QFL fixes this. The figure scatters, per detection,

    score = the detection's predicted score (its class probability; for a GFL head the joint class-IoU
            score; sqrt(cls * quality) for heads with a quality branch), i.e. the score the evaluator ranks by
    IoU   = max over ground truths g of the same class in the image of IoU(box, g)   (0 if there is none)

and this module adds Pearson's correlation coefficient (over all detections, and over those with
IoU >= 0.5, where the low-IoU false positives no longer dominate)

    r = sum_i (s_i - mean s)(u_i - mean u) / sqrt(sum_i (s_i - mean s)^2 * sum_i (u_i - mean u)^2).

Detections are the model's final outputs, i.e. **after** score thresholding, top-k and NMS (the boxes that
are evaluated), over the images of the val loader; ``model.test.score_thr`` sets the lowest score kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detector.analysis.batches import first_images
from detector.analysis.plotting import COLOURS, new_figure, save_png


def best_iou_same_class(pred_boxes: Tensor, pred_labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
    """(D,) max IoU of each detection with the ground truths of its own class (0 when there is none)."""
    if pred_boxes.numel() == 0 or gt_boxes.numel() == 0:
        return torch.zeros(pred_boxes.shape[0], dtype=torch.float32)
    iou = box_iou(pred_boxes.float(), gt_boxes.float())  # (D, G)
    same_class = pred_labels[:, None] == gt_labels[None, :]  # (D, G)
    return torch.where(same_class, iou, torch.zeros_like(iou)).amax(dim=1)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two equal-length samples; NaN when fewer than 2 points or either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x {x.shape} and y {y.shape} must have one shape")
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else math.nan


@dataclass
class ScoreIoU:
    scores: np.ndarray  # (D,)
    ious: np.ndarray    # (D,)
    num_images: int

    @property
    def correlation(self) -> float:
        return pearson(self.scores, self.ious)

    def correlation_above(self, min_iou: float) -> tuple[float, int]:
        """(r, count) over the detections with IoU >= ``min_iou`` (the localised ones, whose ranking by
        score decides AP at the stricter thresholds)."""
        keep = self.ious >= min_iou
        return pearson(self.scores[keep], self.ious[keep]), int(keep.sum())


@torch.no_grad()
def collect_score_iou(model: nn.Module, batches: Iterable[tuple[Tensor, list[dict]]], device: torch.device,
                      max_images: int | None = None) -> ScoreIoU:
    """Run ``model`` in eval mode and pair every final detection's score with its same-class best IoU."""
    model.eval()
    scores, ious, num_images = [], [], 0
    for images, targets in first_images(batches, max_images):
        detections = model(images.to(device))
        for det, target in zip(detections, targets):  # a few hundred images: not a hot path
            ious.append(best_iou_same_class(det["boxes"].cpu(), det["labels"].cpu(), target["boxes"],
                                            target["labels"]))
            scores.append(det["scores"].float().cpu())
        num_images += len(targets)
    return ScoreIoU(torch.cat(scores).numpy(), torch.cat(ious).numpy(), num_images)


def subsample(num: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` of ``num`` points (all of them, in order, when they fit)."""
    if num <= max_points:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, size=max_points, replace=False))


def plot_score_iou(results: Sequence[ScoreIoU], names: Sequence[str], out: str | os.PathLike,
                   max_points: int = 4000) -> Path:
    """One scatter panel per model: IoU with the ground truth (x) vs predicted score (y), r in the title."""
    if len(results) != len(names) or not results:
        raise ValueError("give one name per result, at least one")
    figure, axes_list = new_figure(len(results), width_per_panel=4.6, height=4.4)
    for index, (result, name, axes) in enumerate(zip(results, names, axes_list)):
        keep = subsample(len(result.scores), max_points, seed=index)
        axes.scatter(result.ious[keep], result.scores[keep], s=4, alpha=0.35, color=COLOURS[index % len(COLOURS)],
                     edgecolors="none", rasterized=True)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("IoU with the same-class ground truth")
        axes.set_ylabel("predicted score")
        shown = "" if len(keep) == len(result.scores) else f", {len(keep):,} shown"
        r_high, num_high = result.correlation_above(0.5)
        axes.set_title(f"{name}: {len(result.scores):,} detections{shown}\nPearson r = {result.correlation:.3f} "
                       f"(IoU >= 0.5: r = {r_high:.3f}, {num_high:,})", fontsize=10)
        axes.grid(alpha=0.3)
    return save_png(figure, out)
