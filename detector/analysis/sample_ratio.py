"""EFL Fig. 2 (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection", CVPR 2022):
the ratio of positive to negative samples of each category under a detector's anchor assignment.

With per-class sigmoid classifiers every non-ignored anchor is a sample of every category. For category j,
summed over the images of a split:

    pos_j = #{anchors assigned (as positives) to a ground truth of class j}
    neg_j = #{non-ignored anchors} - pos_j          (every anchor that is not a positive of j, as the EFL
                                                     paper counts: background anchors and the positives of
                                                     all other categories)
    ratio_j = pos_j / neg_j

The anchors and the assignment are the model's own (its AnchorGenerator and assigner, MaxIoU or ATSS, run
batched through ``detector.assigners.assign_targets``); the network itself never runs. Ground truths are read from
the annotation file only (no image is decoded) and resized as the data pipeline resizes them (shorter side to
the largest of ``min_size``, longer side capped, no flip), then padded per batch to a multiple of
``size_divisor``. A level of stride s on a padded H x W input has ceil(H / s) x ceil(W / s) locations: the
ResNet stem, its stride-2 stages and the stride-2 P6/P7 convolutions each map n to ceil(n / 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detector.analysis.plotting import new_figure, save_png
from detector.assigners import IGNORE, assign_targets
from detector.data.transforms import resized_shape

FREQUENCY_COLOURS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}
FREQUENCY_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def feature_sizes(image_size: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """(ceil(H / s), ceil(W / s)) per level: the FPN map sizes of a padded H x W input."""
    height, width = image_size
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def count_pos_neg_per_class(assigned: Tensor, gt_labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """pos_j and neg_j (each (K,) int64) of one batch.

    Args:
        assigned: (B, N) assigner codes: gt index >= 0, -1 background, -2 ignored.
        gt_labels: (B, G) class of each (padded) ground truth.
    """
    positive = assigned >= 0  # (B, N)
    batch_idx, anchor_idx = positive.nonzero(as_tuple=True)  # (P,)
    labels = gt_labels[batch_idx, assigned[batch_idx, anchor_idx]]  # (P,)
    pos = torch.bincount(labels.cpu(), minlength=num_classes)[:num_classes]  # (K,)
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"a ground truth has class {int(labels.max())} but there are {num_classes} classes")
    num_valid = int((assigned != IGNORE).sum())
    return pos, num_valid - pos


def annotation_batches(dataset, min_size: int, max_size: int, size_divisor: int, batch_size: int,
                       max_images: int | None = None) -> Iterator[tuple[tuple[int, int], list[dict]]]:
    """(padded (H, W), targets) per batch of consecutive images, boxes resized as the pipeline does.

    ``dataset`` is a CocoDetection / LVISDetection (``get_target`` and ``get_image_info``; no image needed).
    """
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    for start in range(0, count, batch_size):
        targets, sizes = [], []
        for index in range(start, min(start + batch_size, count)):
            target = dataset.get_target(index)
            height, width = target["orig_size"]
            new_h, new_w = resized_shape(height, width, min_size, max_size)
            scale = torch.tensor([new_w / width, new_h / height, new_w / width, new_h / height])
            targets.append({"boxes": target["boxes"] * scale, "labels": target["labels"],
                            "ignore_boxes": target["ignore_boxes"] * scale})
            sizes.append((new_h, new_w))
        padded = tuple(int(math.ceil(max(s[i] for s in sizes) / size_divisor) * size_divisor) for i in (0, 1))
        yield padded, targets


@dataclass
class SampleCounts:
    positives: np.ndarray   # (K,) pos_j
    negatives: np.ndarray   # (K,) neg_j
    num_images: int

    @property
    def ratio(self) -> np.ndarray:
        return self.positives / np.maximum(self.negatives, 1)


@torch.no_grad()
def count_samples(anchor_generator, assigner, batches, num_classes: int,
                  device: torch.device = torch.device("cpu")) -> SampleCounts:
    """Sum pos_j / neg_j over ``annotation_batches`` with the model's anchors and assigner."""
    pos_total = torch.zeros(num_classes, dtype=torch.int64)
    neg_total = torch.zeros(num_classes, dtype=torch.int64)
    num_images = 0
    for image_size, targets in batches:
        levels = anchor_generator.grid_anchors(feature_sizes(image_size, anchor_generator.strides), device,
                                               image_size=image_size)
        anchors = torch.cat(levels)  # (A, 4)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        gt, assigned = assign_targets(assigner, anchors, [len(a) for a in levels], targets)
        pos, neg = count_pos_neg_per_class(assigned, gt.labels, num_classes)
        pos_total += pos
        neg_total += neg
        num_images += len(targets)
    return SampleCounts(pos_total.numpy(), neg_total.numpy(), num_images)


def instances_per_class(dataset, num_classes: int, max_images: int | None = None) -> np.ndarray:
    """(K,) number of (non-crowd) ground-truth boxes of each class in the first ``max_images`` images."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(dataset) if max_images is None else min(len(dataset), max_images)):
        counts += np.bincount(dataset.get_target(index)["labels"].numpy(), minlength=num_classes)[:num_classes]
    return counts


def plot_sample_ratio(counts: SampleCounts, instances: np.ndarray, out: str | os.PathLike,
                      frequency: Sequence[str] | None = None, title: str = "") -> Path:
    """Bars of pos_j / neg_j on a log scale, categories sorted by training instances (most first).

    ``frequency``: "r" / "c" / "f" per class (LVIS) colours the bars; categories without any positive
    have no bar (log scale) and are counted in the title.
    """
    order = np.argsort(-instances, kind="stable")
    ratio = counts.ratio[order]
    colours = [FREQUENCY_COLOURS.get(frequency[j], "0.5") for j in order] if frequency else "tab:blue"
    figure, (axes,) = new_figure(1, width_per_panel=min(12.0, 5.0 + 0.08 * len(order)), height=4.2)
    shown = np.where(ratio > 0, ratio, np.nan)
    axes.bar(np.arange(len(order)), shown, color=colours, width=0.85)
    axes.set_yscale("log")
    axes.set_xlim(-0.6, len(order) - 0.4)
    axes.set_xlabel("categories sorted by number of training instances (most first)")
    axes.set_ylabel("positive / negative samples")
    if frequency:
        from matplotlib.patches import Patch
        present = [g for g in ("f", "c", "r") if g in frequency]
        axes.legend(handles=[Patch(color=FREQUENCY_COLOURS[g], label=FREQUENCY_NAMES[g]) for g in present])
    no_pos = int((counts.positives == 0).sum())
    detail = f"{counts.num_images} images, {len(order)} categories" + (f", {no_pos} without positives" if no_pos
                                                                        else "")
    axes.set_title(f"{title}\n{detail}" if title else detail, fontsize=10)
    axes.grid(axis="y", alpha=0.3, which="both")
    return save_png(figure, out)


def format_counts(counts: SampleCounts, instances: np.ndarray, class_names: Sequence[str],
                  frequency: Sequence[str] | None = None, limit: int = 10) -> str:
    """The first and last ``limit`` categories (by instances) with their counts and ratio."""
    order = list(np.argsort(-instances, kind="stable"))
    rows = order if len(order) <= 2 * limit else order[:limit] + [None] + order[-limit:]
    lines = [f"{'category':<24} {'group':>5} {'instances':>9} {'positives':>10} {'negatives':>12} {'pos/neg':>10}"]
    for j in rows:
        if j is None:
            lines.append("...")
            continue
        group = frequency[j] if frequency else "-"
        lines.append(f"{class_names[j][:24]:<24} {group:>5} {instances[j]:>9} {counts.positives[j]:>10} "
                     f"{counts.negatives[j]:>12} {counts.ratio[j]:>10.2e}")
    return "\n".join(lines)
