"""Inference post-processing shared by the dense heads, batched over images.

1. per level, the top-k (class, anchor) scores of each image above the score threshold;
2. the head decodes boxes for those candidates only;
3. one class-aware NMS call for the whole batch (torchvision.ops.batched_nms, keyed by image and class);
4. the best ``max_dets`` per image.

Boxes stay in the network-input frame; detector.evaluation.inference rescales them to the original images.

Everything runs in fp32 (fp16 NMS loses AP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class InferenceParams:
    """The inference settings of a dense head (``model.test``): candidates scoring above ``score_thr``, at most
    ``topk_per_level`` per level and image, class-aware NMS at IoU ``nms_iou``, the best ``max_dets`` per image."""
    score_thr: float = 0.05
    topk_per_level: int = 1000
    nms_iou: float = 0.5
    max_dets: int = 100


@dataclass
class Candidates:
    batch_idx: Tensor   # (N,) image of each candidate
    anchor_idx: Tensor  # (N,) index into the concatenated anchors of all levels
    labels: Tensor      # (N,) class
    scores: Tensor      # (N,) fp32


def select_candidates(scores: Tensor, num_anchors_per_level: list[int], score_thr: float,
                      topk_per_level: int) -> Candidates:
    """Top-k per level and image of ``scores`` (B, A, K), keeping those above ``score_thr``."""
    batch, _, num_classes = scores.shape
    parts = []
    start = 0
    for count in num_anchors_per_level:
        level = scores[:, start:start + count].reshape(batch, -1).float()  # (B, A_l * K)
        k = min(topk_per_level, level.shape[1])
        top_scores, top_idx = level.topk(k, dim=1)  # (B, k), sorted
        keep = top_scores > score_thr
        batch_idx = keep.nonzero()[:, 0]
        flat = top_idx[keep]
        parts.append((batch_idx, flat // num_classes + start, flat % num_classes, top_scores[keep]))
        start += count
    batch_idx, anchor_idx, labels, kept = (torch.cat(p) for p in zip(*parts))
    return Candidates(batch_idx, anchor_idx, labels, kept)


def nms_per_image(boxes: Tensor, candidates: Candidates, num_images: int, image_size: tuple[int, int],
                  nms_iou: float, max_dets: int) -> list[dict]:
    """Clip, class-aware NMS per image (one batched call), keep the best ``max_dets`` of each image.

    Returns one dict per image: ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,).
    """
    height, width = image_size
    boxes = boxes.float()
    boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                         boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
    num_classes = int(candidates.labels.max()) + 1 if len(candidates.labels) else 1
    keep = batched_nms(boxes, candidates.scores, candidates.batch_idx * num_classes + candidates.labels,
                       nms_iou)  # sorted by decreasing score
    image_of_kept = candidates.batch_idx[keep]
    order = torch.sort(image_of_kept, stable=True).indices  # grouped by image, still by score inside
    keep, image_of_kept = keep[order], image_of_kept[order]
    counts = torch.bincount(image_of_kept, minlength=num_images)  # (B,)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_image = torch.arange(len(keep), device=keep.device) - starts[image_of_kept]
    selected = rank_in_image < max_dets
    keep, image_of_kept = keep[selected], image_of_kept[selected]
    sizes = torch.bincount(image_of_kept, minlength=num_images).tolist()
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(
        boxes[keep].split(sizes), candidates.scores[keep].split(sizes), candidates.labels[keep].split(sizes))]

