"""Box formats, IoU variants and box coders.

All boxes are ``(x1, y1, x2, y2)`` ("xyxy") in input pixels unless a name says otherwise; widths are
``x2 - x1`` (no ``+ 1``). Maths runs in at least fp32: half-precision inputs are promoted with
``.float()`` (float64 is kept, so gradients can be checked in double precision).

torchvision.ops covers the pairwise ``(N, 4) x (M, 4)`` IoU / GIoU and format conversion; what is written
by hand here is what it lacks:

- ``box_iou_batched`` / ``box_iof_batched``: per-image ground truths ``(B, G, 4)`` against one shared anchor
  set ``(A, 4)``. ``torchvision.ops.box_iou`` broadcasts leading dims too, but it materialises three
  ``(B, G, A, 2)`` temporaries (6x the result) and divides 0 / 0 into NaN for degenerate boxes; at
  B = 16, G = 200, A = 120k the result alone is 1.5 GB, so the version here works one coordinate at a time,
  in place, and returns 0 for degenerate boxes.
- ``box_iou_paired`` / ``generalized_box_iou_paired``: IoU / GIoU of box ``i`` with box ``i`` (the diagonal
  only). torchvision has the all-pairs matrix and a GIoU *loss* that indexes with a boolean mask
  (a host sync); the paired values themselves are needed for quality targets (GFL) and the GIoU loss.
- ``DeltaBoxCoder`` (R-CNN deltas) and ``DistancePointCoder`` (point-to-side distances, FCOS / GFL).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "box_area",
    "box_iou_batched",
    "box_iof_batched",
    "box_iou_paired",
    "generalized_box_iou_paired",
    "cxcywh_to_xyxy",
    "xyxy_to_cxcywh",
    "DeltaBoxCoder",
    "DistancePointCoder",
]


def _promote(t: Tensor) -> Tensor:
    """Cast to fp32 unless already fp32 / fp64 (fp16 and bf16 box maths loses whole pixels)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)`` over any leading dims (torchvision's box_convert)."""
    return box_convert(_promote(boxes), in_fmt="cxcywh", out_fmt="xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` over any leading dims (torchvision's box_convert)."""
    return box_convert(_promote(boxes), in_fmt="xyxy", out_fmt="cxcywh")


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes ``(..., 4) -> (...)``, 0 for degenerate (inverted) boxes.

    Written here because torchvision.ops.box_area returns negative areas for inverted boxes, which would
    turn an IoU union negative.
    """
    boxes = _promote(boxes)
    width = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    height = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return width * height


def _batched_overlap(boxes1: Tensor, boxes2: Tensor, over_union: bool) -> Tensor:
    """Intersection ``(B, N, M)`` divided by the union (IoU) or by the area of ``boxes2`` (IoF).

    On a CPU a fresh 40 MB tensor costs ~10x the arithmetic written into it (page faults), so the
    ``(B, N, M)`` planes are few and reused through ``out=``: three allocations in all.
    """
    if boxes1.dim() != 3 or boxes1.shape[-1] != 4:
        raise ValueError(f"boxes1 must be (B, N, 4), got {tuple(boxes1.shape)}")
    if boxes2.dim() not in (2, 3) or boxes2.shape[-1] != 4:
        raise ValueError(f"boxes2 must be (M, 4) or (B, M, 4), got {tuple(boxes2.shape)}")
    if boxes2.dim() == 3 and boxes2.shape[0] not in (1, boxes1.shape[0]):
        raise ValueError(f"batch sizes differ: {boxes1.shape[0]} vs {boxes2.shape[0]}")
    boxes1, boxes2 = _promote(boxes1), _promote(boxes2)
    if boxes2.dim() == 2:
        boxes2 = boxes2.unsqueeze(0)  # (1, M, 4)
    # Contiguous coordinate planes so every broadcast below streams memory linearly.
    ax1, ay1, ax2, ay2 = boxes1.unsqueeze(-2).movedim(-1, 0).contiguous().unbind(0)  # 4 x (B, N, 1)
    bx1, by1, bx2, by2 = boxes2.unsqueeze(-3).movedim(-1, 0).contiguous().unbind(0)  # 4 x (B|1, 1, M)
    inter = torch.minimum(ax2, bx2)  # (B, N, M)
    scratch = torch.maximum(ax1, bx1)  # (B, N, M)
    inter.sub_(scratch).clamp_(min=0)  # intersection widths
    torch.minimum(ay2, by2, out=scratch)
    scratch.sub_(torch.maximum(ay1, by1)).clamp_(min=0)  # intersection heights
    inter.mul_(scratch)  # (B, N, M) intersection areas
    area2 = (bx2 - bx1).clamp_(min=0).mul_((by2 - by1).clamp_(min=0))  # (B|1, 1, M)
    tiny = torch.finfo(inter.dtype).tiny
    if not over_union:
        return inter.div_(area2.clamp_(min=tiny))
    area1 = (ax2 - ax1).clamp_(min=0).mul_((ay2 - ay1).clamp_(min=0))  # (B, N, 1)
    union = torch.add(area1, area2, out=scratch).sub_(inter)  # (B, N, M)
    # union == 0 only when inter == 0 too (both boxes degenerate): 0 / tiny = 0 instead of NaN.
    return inter.div_(union.clamp_(min=tiny))


@torch.no_grad()
def box_iou_batched(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``boxes1 (B, N, 4)`` with ``boxes2 (M, 4)`` or ``(B, M, 4)`` -> ``(B, N, M)``.

    IoU = |a n b| / |a u b|; degenerate boxes (zero or negative width / height) give 0, never NaN.
    Built for target assignment: not differentiable (use ``box_iou_paired`` inside a loss). Peak memory
    is three ``(B, N, M)`` planes of fp32.
    """
    return _batched_overlap(boxes1, boxes2, over_union=True)


@torch.no_grad()
def box_iof_batched(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the area of the *second* boxes: ``|a n b| / |b|`` -> ``(B, N, M)``.

    Used for crowd / ignore regions (``boxes1``) against anchors (``boxes2``): the fraction of each anchor
    that lies inside the region. Degenerate ``boxes2`` give 0. Not differentiable.
    """
    return _batched_overlap(boxes1, boxes2, over_union=False)


def _paired_terms(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    boxes1, boxes2 = _promote(boxes1), _promote(boxes2)
    if boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
        raise ValueError(f"boxes must end in 4 coordinates, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    a = boxes1.unbind(-1)
    b = boxes2.unbind(-1)
    inter_w = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    inter_h = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = inter_w * inter_h
    area1 = (a[2] - a[0]).clamp(min=0) * (a[3] - a[1]).clamp(min=0)
    area2 = (b[2] - b[0]).clamp(min=0) * (b[3] - b[1]).clamp(min=0)
    return inter, area1 + area2 - inter, a, b


def box_iou_paired(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]``: ``(..., 4), (..., 4) -> (...)``; IoU = |a n b| / (|a u b| + eps)."""
    inter, union, _, _ = _paired_terms(boxes1, boxes2)
    return inter / (union + eps)


def generalized_box_iou_paired(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """GIoU of ``boxes1[i]`` with ``boxes2[i]`` -> ``(...)`` (Rezatofighi et al., CVPR 2019).

    GIoU = IoU - |C \\ (a u b)| / |C|, C the smallest box enclosing a and b, with the eps placement of
    torchvision.ops.generalized_box_iou_loss: IoU = I / (U + eps), penalty (|C| - U) / (|C| + eps).
    """
    inter, union, a, b = _paired_terms(boxes1, boxes2)
    iou = inter / (union + eps)
    enclose_w = (torch.maximum(a[2], b[2]) - torch.minimum(a[0], b[0])).clamp(min=0)
    enclose_h = (torch.maximum(a[3], b[3]) - torch.minimum(a[1], b[1])).clamp(min=0)
    enclose = enclose_w * enclose_h
    return iou - (enclose - union) / (enclose + eps)


class DeltaBoxCoder:
    """R-CNN box parameterisation (Girshick et al., "Rich feature hierarchies...", CVPR 2014).

    With anchor centre (a_x, a_y), size (a_w, a_h), target centre (g_x, g_y), size (g_w, g_h):
        d_x = w_x (g_x - a_x) / a_w,   d_y = w_y (g_y - a_y) / a_h,
        d_w = w_w log(g_w / a_w),      d_h = w_h log(g_h / a_h).
    ``decode`` inverts it, clamping d_w / w_w and d_h / w_h at ``clamp`` before ``exp`` so a wild
    prediction cannot overflow. Leading dims broadcast; maths in at least fp32.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = math.log(1000.0 / 16)) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 entries, got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets ``(..., 4)`` taking ``anchors`` onto ``gt_boxes`` (both xyxy)."""
        gt_boxes, anchors = _promote(gt_boxes), _promote(anchors)
        wx, wy, ww, wh = self.weights
        anchor_w = anchors[..., 2] - anchors[..., 0]
        anchor_h = anchors[..., 3] - anchors[..., 1]
        anchor_cx = anchors[..., 0] + 0.5 * anchor_w
        anchor_cy = anchors[..., 1] + 0.5 * anchor_h
        gt_w = gt_boxes[..., 2] - gt_boxes[..., 0]
        gt_h = gt_boxes[..., 3] - gt_boxes[..., 1]
        gt_cx = gt_boxes[..., 0] + 0.5 * gt_w
        gt_cy = gt_boxes[..., 1] + 0.5 * gt_h
        dx = wx * (gt_cx - anchor_cx) / anchor_w
        dy = wy * (gt_cy - anchor_cy) / anchor_h
        dw = ww * torch.log(gt_w / anchor_w)
        dh = wh * torch.log(gt_h / anchor_h)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` xyxy from ``deltas (..., 4)`` applied to ``anchors (..., 4)``."""
        deltas, anchors = _promote(deltas), _promote(anchors)
        wx, wy, ww, wh = self.weights
        anchor_w = anchors[..., 2] - anchors[..., 0]
        anchor_h = anchors[..., 3] - anchors[..., 1]
        anchor_cx = anchors[..., 0] + 0.5 * anchor_w
        anchor_cy = anchors[..., 1] + 0.5 * anchor_h
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.clamp)
        pred_cx = dx * anchor_w + anchor_cx
        pred_cy = dy * anchor_h + anchor_cy
        half_w = 0.5 * torch.exp(dw) * anchor_w
        half_h = 0.5 * torch.exp(dh) * anchor_h
        return torch.stack((pred_cx - half_w, pred_cy - half_h, pred_cx + half_w, pred_cy + half_h), dim=-1)


class DistancePointCoder:
    """Point-to-side distances (FCOS, Tian et al. 2019; used by GFL, Li et al. 2020).

    For a point (p_x, p_y) and box (x1, y1, x2, y2): (l, t, r, b) = (p_x - x1, p_y - y1, x2 - p_x, y2 - p_y).
    Callers divide by the level stride themselves when they regress in stride units.
    """

    def encode(self, points: Tensor, gt_boxes: Tensor, max_distance: float | None = None) -> Tensor:
        """Distances ``(..., 4)`` from ``points (..., 2)`` to the sides of ``gt_boxes (..., 4)``.

        ``max_distance`` clamps the result to ``[0, max_distance]`` (GFL keeps targets below reg_max).
        """
        points, gt_boxes = _promote(points), _promote(gt_boxes)
        distances = torch.cat((points - gt_boxes[..., :2], gt_boxes[..., 2:] - points), dim=-1)
        if max_distance is not None:
            distances = distances.clamp(min=0, max=max_distance)
        return distances

    def decode(self, points: Tensor, distances: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` xyxy from ``points (..., 2)`` and ``distances (..., 4)`` (l, t, r, b)."""
        points, distances = _promote(points), _promote(distances)
        return torch.cat((points - distances[..., :2], points + distances[..., 2:]), dim=-1)
