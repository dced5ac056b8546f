"""Inference post-processing shared by the dense heads, batched over images.

1. detection scores (B, N, K): the class probability p = sigmoid(cls), fused with a quality branch's
   q = sigmoid(quality) when the head has one (``quality_fusion``): sqrt(p q) (sfzhang15/ATSS) or p q
   (United-Perception's EFL improved baseline);
2. per level, the top-k (class, anchor) pairs of each image by that score among those passing the score
   threshold, applied to the detection score itself (``score_thr_on: combined``) or to the class probability p
   alone (``score_thr_on: class``, as both official codes do before the quality joins the ranking); k is
   ``topk_per_level``, at most the level's anchors x classes, or at most its anchors (``topk_capped_at_anchors``,
   the official EFL code);
3. the head decodes boxes for those candidates only;
4. one class-aware NMS call for the whole batch (torchvision.ops.batched_nms keyed by image and class, in
   float64: see :func:`grouped_nms`);
5. the best ``max_dets`` per image, laid out in fixed-size tensors (:class:`DetectionBatch`: boxes (B, D, 4),
   scores (B, D), labels (B, D), num_detections (B,), D = ``max_dets``).

Each image's boxes are clipped to its own size (``image_sizes``: after the resize, before the batch padding)
before NMS, as torchvision and mmdetection do: clipping to the padded canvas instead would let an image batched
with a larger one keep two copies of a box that, alone, NMS merges. The clip gathers each candidate's bounds by
its image index, so it stays one batched operation. Every step is a tensor operation without per-image loops
or shape-dependent Python branches, so the eager model (``head.predict``, which only cuts the fixed layout into
one dict per image: :func:`unpad_detections`) and the exported ONNX / TorchScript graphs (detector.export) run
this same code. Boxes stay in the network-input frame; detector.evaluation.inference rescales them to the
original images.

Everything runs in fp32 (fp16 NMS loses AP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms


SCORE_THRESHOLD_INPUTS = ("combined", "class")
QUALITY_FUSIONS = ("sqrt", "product")


@dataclass(frozen=True)
class InferenceParams:
    """The inference settings of a dense head (``model.test``): candidates passing ``score_thr`` (on the detection
    score, or on the class probability with ``score_thr_on="class"``), at most ``topk_per_level`` per level and
    image (and at most the level's anchor count with ``topk_capped_at_anchors``), class-aware NMS at IoU
    ``nms_iou``, the best ``max_dets`` per image; ``quality_fusion`` combines the class probability with a quality
    branch (sqrt(p q) or p q; no effect on heads without one)."""
    score_thr: float = 0.05
    topk_per_level: int = 1000
    nms_iou: float = 0.5
    max_dets: int = 100
    score_thr_on: str = "combined"
    quality_fusion: str = "sqrt"
    topk_capped_at_anchors: bool = False

    def __post_init__(self):
        if self.score_thr_on not in SCORE_THRESHOLD_INPUTS:
            raise ValueError(f"score_thr_on must be one of {SCORE_THRESHOLD_INPUTS}, got {self.score_thr_on!r}")
        if self.quality_fusion not in QUALITY_FUSIONS:
            raise ValueError(f"quality_fusion must be one of {QUALITY_FUSIONS}, got {self.quality_fusion!r}")
        if self.topk_per_level < 1 or self.max_dets < 1:
            raise ValueError(f"topk_per_level ({self.topk_per_level}) and max_dets ({self.max_dets}) must be >= 1")


def fuse_quality(class_probs: Tensor, quality: Tensor | None, fusion: str) -> Tensor:
    """Detection scores (B, N, K) from class probabilities p (B, N, K) and quality probabilities q (B, N):
    p without a quality branch (q None), else sqrt(p q) (``fusion="sqrt"``) or p q (``"product"``)."""
    if quality is None:
        return class_probs
    combined = class_probs * quality[..., None]  # (B, N, K)
    return combined.sqrt_() if fusion == "sqrt" else combined


@dataclass
class Candidates:
    batch_idx: Tensor   # (N,) image of each candidate
    anchor_idx: Tensor  # (N,) index into the concatenated anchors of all levels
    labels: Tensor      # (N,) class
    scores: Tensor      # (N,) fp32


class DetectionBatch(NamedTuple):
    """Detections of a batch in a fixed layout (D = ``max_dets``): image b's first ``num_detections[b]`` slots hold
    its detections by decreasing score; the other slots hold zero boxes, score 0 and label -1."""
    boxes: Tensor           # (B, D, 4) xyxy in input pixels
    scores: Tensor          # (B, D) fp32
    labels: Tensor          # (B, D) int64
    num_detections: Tensor  # (B,) int64


def select_candidates(scores: Tensor, num_anchors_per_level: list[int], params: InferenceParams,
                      threshold_scores: Tensor | None = None) -> Candidates:
    """Per level and image, the top-k (anchor, class) pairs of ``scores`` (B, N, K) among those whose
    ``threshold_scores`` (B, N, K; default ``scores`` itself) exceed ``params.score_thr``.

    k = min(topk_per_level, A_l K), or min(topk_per_level, A_l) with ``topk_capped_at_anchors`` (A_l anchors in
    level l, K classes). Pairs failing the threshold are ranked below every passing one (scores are >= 0) and
    dropped after the top-k, so fewer than k pairs may remain; no per-image loop. Each level's pairs are padded
    with topk_per_level failing ones, so one top-k of that fixed size serves every input size (an exported graph
    with a dynamic input size has no Python ``min`` over the level's size to bake in); the anchor cap is a rank
    mask."""
    threshold_scores = scores if threshold_scores is None else threshold_scores
    batch, _, num_classes = scores.shape
    k = params.topk_per_level
    parts = []
    start = 0
    for count in num_anchors_per_level:
        level = scores[:, start:start + count].reshape(batch, -1).float()  # (B, A_l * K)
        passed = threshold_scores[:, start:start + count].reshape(batch, -1) > params.score_thr  # (B, A_l * K)
        ranked = torch.cat([level.masked_fill(~passed, -1.0), level.new_full((batch, k), -1.0)], dim=1)
        passed = torch.cat([passed, passed.new_zeros((batch, k))], dim=1)  # (B, A_l * K + k)
        top_scores, top_idx = ranked.topk(k, dim=1)  # (B, k), sorted; failing pairs rank last
        keep = passed.gather(1, top_idx)  # (B, k)
        if params.topk_capped_at_anchors:
            keep = keep & (torch.arange(k, device=keep.device) < count)[None]
        batch_idx = keep.nonzero()[:, 0]
        flat = top_idx[keep]
        parts.append((batch_idx, flat // num_classes + start, flat % num_classes, top_scores[keep]))
        start = start + count
    batch_idx, anchor_idx, labels, kept = (torch.cat(p) for p in zip(*parts))
    return Candidates(batch_idx, anchor_idx, labels, kept)


def image_sizes_tensor(image_sizes, canvas_size: tuple[int, int], num_images: int, device: torch.device) -> Tensor:
    """Per-image (h, w) as a float tensor (B, 2) on ``device``: ``image_sizes`` given as a (B, 2) tensor or a
    sequence of B (h, w) pairs, or None for the padded ``canvas_size`` (H, W) for every image."""
    if image_sizes is None:
        return torch.tensor([canvas_size], dtype=torch.float32, device=device).expand(num_images, 2)
    if not isinstance(image_sizes, Tensor):
        pairs = [tuple(int(v) for v in size) for size in image_sizes]
        if len(pairs) != num_images or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"image_sizes needs one (h, w) pair per image ({num_images}), got {image_sizes!r}")
        too_large = [pair for pair in pairs if pair[0] > canvas_size[0] or pair[1] > canvas_size[1]]
        if too_large or any(v < 1 for pair in pairs for v in pair):
            raise ValueError(f"image_sizes {too_large or pairs} do not fit the padded input {canvas_size}")
        image_sizes = torch.tensor(pairs)
    if image_sizes.shape != (num_images, 2):
        raise ValueError(f"image_sizes must be ({num_images}, 2), got {tuple(image_sizes.shape)}")
    return image_sizes.to(device=device, dtype=torch.float32)


def grouped_nms(boxes: Tensor, scores: Tensor, group_ids: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (image x class) at once (``torchvision.ops.batched_nms``); returns the kept indices
    by decreasing score.

    Run in float64, where it is exact: batched_nms either shifts each group's boxes by ``group * (max coordinate
    + 1)`` and makes one NMS call (few boxes) or loops over the groups (many boxes). In float32 the shift rounds
    the coordinates by an amount that grows with the batch's other images and classes, so an image's detections
    would depend on its batch partners; in float64 the shifted float32 coordinates are exact (a box a few thousand
    pixels wide plus a shift below 2^29 fits in 53 bits), so both routes compute, bit for bit, the IoUs and
    decisions of NMS on each group alone. (ONNX's NonMaxSuppression takes float32 boxes only: an exported ONNX
    graph shifts in float64 and casts the shifted boxes to float32, see detector.export.)
    """
    return batched_nms(boxes.double(), scores.double(), group_ids, iou_threshold)


def clip_to_images(boxes: Tensor, batch_idx: Tensor, image_sizes: Tensor) -> Tensor:
    """Boxes (N, 4) of images ``batch_idx`` (N,) clipped to 0 <= x <= w, 0 <= y <= h of their image's
    ``image_sizes`` (B, 2) (h, w); fp32."""
    bounds = image_sizes.to(device=boxes.device, dtype=torch.float32)[batch_idx]  # (N, 2) (h, w)
    upper = bounds[:, [1, 0, 1, 0]]  # (N, 4): x <= w, y <= h
    return torch.minimum(boxes.float().clamp(min=0), upper)


def nms_fixed_layout(boxes: Tensor, scores: Tensor, labels: Tensor, batch_idx: Tensor, num_images: int,
                     image_sizes: Tensor, num_classes: int, nms_iou: float, max_dets: int) -> DetectionBatch:
    """Clip each box to its image's ``image_sizes`` (B, 2) (h, w), class-aware NMS per image (one batched call),
    the best ``max_dets`` of each image in the fixed layout of :class:`DetectionBatch`. ``boxes`` (N, 4) xyxy,
    ``scores`` (N,), ``labels`` (N,) in [0, num_classes) and ``batch_idx`` (N,) in [0, num_images): a head's
    candidates, or the pooled views of test-time augmentation (detector.evaluation.tta).

    A kept box's slot in its image is its rank there by score: the running count of kept boxes of the same image
    (kept boxes come by decreasing score), one cumulative sum over a (M, B) image indicator, without a sort."""
    boxes = clip_to_images(boxes, batch_idx, image_sizes)  # (N, 4)
    keep = grouped_nms(boxes, scores, batch_idx * num_classes + labels, nms_iou)  # (M,) by decreasing score
    image_of_kept = batch_idx[keep]  # (M,)
    in_image = image_of_kept[:, None] == torch.arange(num_images, device=keep.device)[None]  # (M, B)
    rank = (in_image.long().cumsum(0) - 1).gather(1, image_of_kept[:, None])[:, 0]  # (M,) rank in its image
    selected = rank < max_dets
    keep = keep[selected]  # (S,)
    slot = (image_of_kept[selected] * max_dets + rank[selected])[:, None]  # (S, 1) in the flattened (B * D)
    out_boxes = boxes.new_zeros((num_images * max_dets, 4)).scatter(0, slot.expand(-1, 4), boxes[keep])
    out_scores = scores.new_zeros((num_images * max_dets,)).scatter(0, slot[:, 0], scores[keep])
    out_labels = torch.full((num_images * max_dets,), -1, dtype=torch.int64, device=keep.device).scatter(
        0, slot[:, 0], labels[keep].long())
    num_detections = in_image.long().sum(0).clamp(max=max_dets)  # (B,)
    return DetectionBatch(out_boxes.view(num_images, max_dets, 4), out_scores.view(num_images, max_dets),
                          out_labels.view(num_images, max_dets), num_detections)


def unpad_detections(batch: DetectionBatch) -> list[dict]:
    """One dict per image from the fixed layout: ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,)."""
    counts = batch.num_detections.tolist()
    return [{"boxes": boxes[:count], "scores": scores[:count], "labels": labels[:count]}
            for boxes, scores, labels, count in zip(batch.boxes, batch.scores, batch.labels, counts)]
