"""Greedy box matching and precision/recall accumulation shared by the COCO and LVIS fast evaluators.

pycocotools' ``COCOeval`` and lvis-api's ``LVISEval`` match boxes by the same rules, per (image, category)
group, area range and IoU threshold t (0.50:0.05:0.95):

* Detections by score (stable: ties keep input order), ground truths in file order with the ignored ones
  last (ignored = crowd / ``ignore`` flag, or area outside the range).  Each detection takes the free
  ground truth with the highest IoU >= min(t, 1 - 1e-10), the LAST one among equal IoUs, preferring
  non-ignored ground truths.  A crowd ground truth is never used up (it can absorb many detections); its
  IoU is intersection / detection area.  Otherwise IoU = intersection / union with pycocotools' bbIou
  arithmetic: w = min(x_d + w_d, x_g + w_g) - max(x_d, x_g) (same for h), 0 unless w > 0 and h > 0.
* A detection matched to an ignored ground truth is ignored; an unmatched one is ignored when its
  ``unmatched_ignore`` flag is set (area outside the range; LVIS: also a not-exhaustive category).
  A match to a ground truth whose ``id`` is 0 counts as no match (both libraries test the stored id).
* Accumulation, per category and area range: every detection by score (ties: image, then input order),
  cumulative TP/FP, recall = tp / n_gt, precision = tp / (tp + fp + eps) made monotone from the right,
  read at 101 recall points with ``searchsorted(side="left")`` (0 past the last recall); classes without
  a non-ignored ground truth stay -1.

Here the matching is vectorised over all groups at once: only (detection, ground truth) pairs with
IoU >= 0.5 ("edges") take part, and the greedy scan runs step by step over the detections' ranks for a
batch of groups, all area ranges and thresholds together.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "AREA_LABELS",
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "BoxGroundTruth",
    "Detections",
    "accumulate",
    "index_in",
    "match",
    "pair_iou",
]

# pycocotools' / lvis' Params, built with the same expressions so the floats are identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2), (96**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")

_NUM_T, _NUM_A = len(IOU_THRESHOLDS), len(AREA_RANGES)
_MATCH_THRESHOLDS = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)  # evaluateImg: iou = min(t, 1 - 1e-10)
_BIT = (1 << np.arange(_NUM_T)).astype(np.uint16)  # one bit per IoU threshold
_PAIR_CHUNK = 1 << 20  # (detection, ground truth) IoU pairs computed at once
_STATE_CHUNK = 1 << 20  # problems x areas x thresholds x gt columns in one greedy-matching batch

# Dense lookup tables replace binary searches when the ids are small enough (an int64 per id).
_MAX_ID_TABLE = 1 << 22


def index_in(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each value in ``sorted_ids``, whether it is there)."""
    if len(values) > len(sorted_ids) > 0 and 0 <= sorted_ids[0] and sorted_ids[-1] < _MAX_ID_TABLE:
        table = np.full(int(sorted_ids[-1]) + 2, -1, dtype=np.int64)  # last slot: any out-of-range value
        table[sorted_ids] = np.arange(len(sorted_ids))
        position = table[np.clip(values, -1, len(table) - 1)]
        found = position >= 0
        return np.where(found, position, 0), found
    position = np.searchsorted(sorted_ids, values)
    found = position < len(sorted_ids)
    found[found] = sorted_ids[position[found]] == values[found]
    return np.where(found, position, 0), found


@dataclass(frozen=True, eq=False)
class BoxGroundTruth:
    """Ground truths as arrays, sorted by (category, image) and in file order within a group."""

    image_ids: np.ndarray  # (M,) int64, sorted unique
    cat_ids: np.ndarray  # (K,) int64, sorted unique
    cat_names: tuple[str, ...]  # (K,)
    gt_image: np.ndarray  # (G,) int64 index into image_ids
    gt_category: np.ndarray  # (G,) int64 index into cat_ids
    gt_boxes: np.ndarray  # (G, 4) float64 xywh
    gt_area: np.ndarray  # (G,) float64, the annotation's area field
    gt_ignore: np.ndarray  # (G,) bool: ignored in every area range (COCO: iscrowd; LVIS: ignore)
    gt_crowd: np.ndarray  # (G,) bool: crowd region (never used up, IoU = intersection / detection area)
    gt_ann_id: np.ndarray  # (G,) int64

    @cached_property
    def gt_area_ignore(self) -> np.ndarray:
        """(G, A) bool: ground truth ignored in each area range (inclusive bounds, as both libraries)."""
        lo, hi = np.array(AREA_RANGES, dtype=np.float64).T
        area = self.gt_area[:, None]
        return self.gt_ignore[:, None] | (area < lo) | (area > hi)

    @cached_property
    def group_keys(self) -> np.ndarray:
        """(G,) int64 (category, image) group key, ascending: category * M + image."""
        return self.gt_category * len(self.image_ids) + self.gt_image


@dataclass
class Detections:
    """Evaluated detections sorted by (category, image, -score, input order)."""

    image: np.ndarray  # (N,) int64 image index
    category: np.ndarray  # (N,) int64 category index
    boxes: np.ndarray  # (N, 4) float64 xywh
    score: np.ndarray  # (N,) float64
    unmatched_ignore: np.ndarray  # (N, A) bool: ignored when unmatched


def pair_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of paired xywh rows with pycocotools' bbIou arithmetic (same operations, same floats).

    IoU = inter / (area_d + area_g - inter), or inter / area_d where ``crowd`` (the ground truth is a crowd).
    """
    dx, dy, dw, dh = det_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        det_area = dw * dh
        union = det_area + gw * gh - inter
        iou = inter / (union if crowd is None else np.where(crowd, det_area, union))
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _edges(gt: BoxGroundTruth, dets: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(det, gt, iou) for every same-group pair with IoU >= the lowest threshold, sorted by det then gt.

    Pairs below it can never match, so only these edges take part in the greedy matching.
    """
    det_keys = dets.category * len(gt.image_ids) + dets.image
    first = np.searchsorted(gt.group_keys, det_keys, side="left")
    count = np.searchsorted(gt.group_keys, det_keys, side="right") - first
    ends = np.cumsum(count)
    out_det, out_gt, out_iou = [], [], []
    start = 0
    while start < len(count):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _PAIR_CHUNK, side="right")))
        c = count[start:stop]
        det = np.repeat(np.arange(start, stop), c)
        offset = np.arange(len(det)) - np.repeat(np.cumsum(c) - c, c)
        gt_index = np.repeat(first[start:stop], c) + offset
        iou = pair_iou(dets.boxes[det], gt.gt_boxes[gt_index], gt.gt_crowd[gt_index])
        keep = iou >= _MATCH_THRESHOLDS.min()
        out_det.append(det[keep])
        out_gt.append(gt_index[keep])
        out_iou.append(iou[keep])
        start = stop
    if not out_det:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_det), np.concatenate(out_gt), np.concatenate(out_iou)


def _greedy(cols: np.ndarray, ious: np.ndarray, steps: np.ndarray, ignore: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Greedy matching of a batch of problems, all areas and thresholds at once.

    Args:
        cols, ious: (sum C, K) each candidate detection's edges: ground-truth column (ascending, i.e. file
            order) and IoU, padded with IoU -1.  Rows are step-major: rows [off[j], off[j] + steps[j])
            hold detection j (by score) of problems 0..steps[j]-1 (problems sorted by C descending).
        steps: (max C,) number of problems still active at each step.
        ignore: (P, A, H) ground truth ignored per area range.
        crowd: (P, H) crowd ground truths, never marked as matched.
    Returns:
        (sum C, A, T) int64 column of the matched ground truth, -1 when unmatched.
    """
    num_problems, _, width = ignore.shape
    matched = np.zeros((num_problems, _NUM_A, _NUM_T, width), dtype=bool)
    out = np.empty((len(cols), _NUM_A, _NUM_T), dtype=np.int64)
    # Edges are left-aligned: a step needs only as many columns as its rows' most edges.
    step_start = np.r_[0, np.cumsum(steps)[:-1]]
    step_edges = np.maximum.reduceat((ious > -1).sum(axis=1), step_start) if len(steps) else steps
    offset = 0
    for n, num_edges in zip(steps.tolist(), step_edges.tolist()):
        num_edges = max(num_edges, 1)
        col = cols[offset : offset + n, None, None, :num_edges]  # (n, 1, 1, K)
        iou = ious[offset : offset + n, None, None, :num_edges]
        taken = np.take_along_axis(matched[:n], col, axis=-1)  # (n, A, T, K)
        ign = np.take_along_axis(ignore[:n], col[:, :, 0], axis=-1)[:, :, None, :]  # (n, A, 1, K)
        free = (iou >= _MATCH_THRESHOLDS[None, None, :, None]) & ~taken
        # Prefer non-ignored ground truths: ignored ones compete only when no non-ignored one is free.
        free &= ~(ign & (free & ~ign).any(axis=-1, keepdims=True))
        value = np.where(free, iou, -1.0)
        last = num_edges - 1 - np.argmax(value[..., ::-1], axis=-1)  # last column among equal IoUs
        best = np.take_along_axis(col, last[..., None], axis=-1)[..., 0]  # (n, A, T)
        best = np.where(free.any(axis=-1), best, -1)
        out[offset : offset + n] = best
        p, a, t = np.nonzero(best >= 0)
        col = best[p, a, t]
        used = ~crowd[p, col]
        matched[p[used], a[used], t[used], col[used]] = True
        offset += n
    return out


@dataclass
class _Problems:
    """Matching problems: (category, image) groups with at least one edge (IoU >= lowest threshold).

    Candidates are the detections / ground truths with an edge; only they can ever be matched.
    """

    cand_det: np.ndarray  # (U,) detection index of each candidate, grouped by problem, by score
    cand_edge_start: np.ndarray  # (U,) first edge of each candidate
    cand_edges: np.ndarray  # (U,) number of edges of each candidate
    edge_col: np.ndarray  # (E,) local column of the edge's ground truth in its problem
    edge_iou: np.ndarray  # (E,)
    cand_gt: np.ndarray  # (V,) ground-truth index of each candidate ground truth, grouped by problem
    cand_start: np.ndarray  # (P,) first candidate detection of each problem
    num_cands: np.ndarray  # (P,) C
    gt_start: np.ndarray  # (P,) first candidate ground truth of each problem
    num_gts: np.ndarray  # (P,) H

    @classmethod
    def build(cls, gt: BoxGroundTruth, dets: Detections, edge_det, edge_gt, edge_iou) -> _Problems:
        new_det = np.r_[True, edge_det[1:] != edge_det[:-1]]
        cand_det = edge_det[new_det]  # ascending = by group, then by score
        cand_edge_start = np.flatnonzero(new_det)
        edge_cand = np.cumsum(new_det) - 1
        cand_group = dets.category[cand_det] * len(gt.image_ids) + dets.image[cand_det]
        new_problem = np.r_[True, cand_group[1:] != cand_group[:-1]]
        cand_problem = np.cumsum(new_problem) - 1
        cand_start = np.flatnonzero(new_problem)
        # Ground truths are sorted by group key like the problems, so unique() keeps them grouped.
        cand_gt = np.unique(edge_gt)
        gt_problem = np.searchsorted(cand_group[cand_start], gt.group_keys[cand_gt])
        gt_start = np.searchsorted(gt_problem, np.arange(len(cand_start)))
        return cls(
            cand_det=cand_det,
            cand_edge_start=cand_edge_start,
            cand_edges=np.diff(np.r_[cand_edge_start, len(edge_det)]),
            edge_col=np.searchsorted(cand_gt, edge_gt) - gt_start[cand_problem[edge_cand]],
            edge_iou=edge_iou,
            cand_gt=cand_gt,
            cand_start=cand_start,
            num_cands=np.diff(np.r_[cand_start, len(cand_det)]),
            gt_start=gt_start,
            num_gts=np.diff(np.r_[gt_start, len(cand_gt)]),
        )


def match(gt: BoxGroundTruth, dets: Detections) -> tuple[np.ndarray, np.ndarray]:
    """(N, A) uint16 TP and FP bit masks (bit t = IoU threshold t) of every detection."""
    tp_bits = np.zeros(dets.unmatched_ignore.shape, dtype=np.uint16)
    fp_bits = np.where(dets.unmatched_ignore, 0, _BIT.sum()).astype(np.uint16)
    edges = _edges(gt, dets)
    if len(edges[0]) == 0:
        return tp_bits, fp_bits
    problems = _Problems.build(gt, dets, *edges)
    del edges
    # Batches of problems padded to a power-of-two number of ground-truth columns, longest first.
    width_of = 1 << np.ceil(np.log2(problems.num_gts)).astype(np.int64)
    for width in np.unique(width_of).tolist():
        members = np.flatnonzero(width_of == width)
        members = members[np.argsort(-problems.num_cands[members], kind="stable")]
        batch = max(1, _STATE_CHUNK // (_NUM_A * _NUM_T * width))
        for begin in range(0, len(members), batch):
            _match_batch(gt, dets, problems, members[begin : begin + batch], width, tp_bits, fp_bits)
    return tp_bits, fp_bits


def _match_batch(gt, dets, problems: _Problems, members, width, tp_bits, fp_bits) -> None:
    """Match problems ``members`` (sorted by C descending) padded to ``width`` columns; write the bits."""
    num_cands = problems.num_cands[members]  # (P,)
    steps = np.searchsorted(-num_cands, -np.arange(num_cands[0]), side="left")  # active problems per step
    local = np.repeat(np.arange(len(members)), num_cands)  # problem of each candidate (batch order)
    rank = np.arange(len(local)) - np.repeat(np.cumsum(num_cands) - num_cands, num_cands)
    cand = problems.cand_start[members][local] + rank
    row = np.r_[0, np.cumsum(steps)][rank] + local  # step-major row of each candidate

    num_edges = problems.cand_edges[cand]
    slot = np.arange(num_edges.sum()) - np.repeat(np.cumsum(num_edges) - num_edges, num_edges)
    edge = np.repeat(problems.cand_edge_start[cand], num_edges) + slot
    edge_row = np.repeat(row, num_edges)
    cols = np.zeros((len(cand), num_edges.max()), dtype=np.int64)
    ious = np.full((len(cand), num_edges.max()), -1.0)
    cols[edge_row, slot] = problems.edge_col[edge]
    ious[edge_row, slot] = problems.edge_iou[edge]

    gt_count = problems.num_gts[members]
    column = np.minimum(np.arange(width)[None, :], gt_count[:, None] - 1)  # padding repeats the last column
    gt_index = problems.cand_gt[problems.gt_start[members][:, None] + column]  # (P, H)
    ignore = gt.gt_area_ignore[gt_index].transpose(0, 2, 1)  # (P, A, H)
    best = _greedy(cols, ious, steps, ignore, gt.gt_crowd[gt_index])[row]  # (n, A, T), candidate order

    det = problems.cand_det[cand]
    matched = best >= 0
    matched_gt = gt_index[local[:, None, None], np.maximum(best, 0)]  # (n, A, T)
    area = np.arange(_NUM_A)[None, :, None]
    real = matched & (gt.gt_ann_id[matched_gt] != 0)  # the gt id is stored as the match: id 0 reads as none
    ignored = (matched & gt.gt_area_ignore[matched_gt, area]) | (~real & dets.unmatched_ignore[det][:, :, None])
    tp_bits[det] = ((real & ~ignored) * _BIT).sum(axis=-1, dtype=np.uint16)
    fp_bits[det] = ((~real & ~ignored) * _BIT).sum(axis=-1, dtype=np.uint16)


def accumulate(
    gt: BoxGroundTruth, dets: Detections, tp_bits: np.ndarray, fp_bits: np.ndarray, max_dets: tuple = (None,)
) -> tuple[np.ndarray, np.ndarray]:
    """precision (T, R, K, A, M) and recall (T, K, A, M) as ``COCOeval`` / ``LVISEval.accumulate`` compute them.

    ``max_dets[m]``: only the detections ranked below it by score within their (image, category) group
    count (COCOeval's maxDets); None counts them all (LVIS caps per image while loading instead).
    """
    num_cats, num_m = len(gt.cat_ids), len(max_dets)
    precision = -np.ones((_NUM_T, len(RECALL_THRESHOLDS), num_cats, _NUM_A, num_m))
    recall = -np.ones((_NUM_T, num_cats, _NUM_A, num_m))
    num_gt = np.stack(
        [np.bincount(gt.gt_category[~gt.gt_area_ignore[:, a]], minlength=num_cats) for a in range(_NUM_A)], axis=1
    )  # (K, A)
    group = dets.category * len(gt.image_ids) + dets.image
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else np.zeros(0, np.int64)
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))  # rank in its group
    bounds = np.searchsorted(dets.category, np.arange(num_cats + 1))
    shifts = np.arange(_NUM_T, dtype=np.uint16)[:, None]
    for k in np.flatnonzero(num_gt.any(axis=1)).tolist():
        start, stop = bounds[k], bounds[k + 1]
        by_score = start + np.argsort(-dets.score[start:stop], kind="stable")  # ties: image, then input order
        for m, cap in enumerate(max_dets):
            order = by_score if cap is None else by_score[rank[by_score] < cap]
            num_dets = len(order)
            for a in np.flatnonzero(num_gt[k]).tolist():
                if num_dets == 0:
                    precision[:, :, k, a, m] = 0.0
                    recall[:, k, a, m] = 0.0
                    continue
                tp = np.cumsum((tp_bits[order, a] >> shifts) & 1, axis=1, dtype=np.int64).astype(np.float64)
                fp = np.cumsum((fp_bits[order, a] >> shifts) & 1, axis=1, dtype=np.int64).astype(np.float64)
                rc = tp / int(num_gt[k, a])
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                recall[:, k, a, m] = rc[:, -1]
                for t in range(_NUM_T):
                    at = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    inside = at < num_dets
                    precision[t, :, k, a, m] = np.where(inside, pr[t, np.minimum(at, num_dets - 1)], 0.0)
    return precision, recall
