"""Vectorised LVIS box evaluation that reproduces lvis-api 0.5.3 (``LVISResults`` + ``LVISEval``) exactly.

Why by hand: lvis-api loops in Python over every (image, category) pair (20k x 1203 = 24M dict entries
on LVIS v1 val) and over every detection x ground truth x IoU threshold x area range; it needs tens of
minutes and more memory than one machine may have, and it gathers all results as dicts.  This module
works on columnar numpy arrays and follows lvis-api's rules step by step (read from lvis/results.py,
lvis/lvis.py and lvis/eval.py), so every metric is bit-identical:

* Loading (``LVISResults``): detections are capped at ``max_dets`` per image BEFORE any filtering, over
  all of the image's detections whatever their category: an image with more keeps its top ``max_dets``
  by score (Python's stable sort: ties keep input order).
* Selection (``_prepare``): ground truths and detections count only with 0 < area < inf (``get_ann_ids``'
  default area range, open at both ends); detection area = w * h, ground-truth area = its ``area`` field.
  A detection is kept only if its category has a ground truth in the image (after that filter) or is in
  the image's ``neg_category_ids``; a ground truth is ignored when its ``ignore`` field is truthy.
* Matching (``evaluate_img``), per (image, category), area range and IoU threshold: detections by score
  (stable: ties keep input order), ground truths in file order with the area-ignored ones last.  Each
  detection takes the unmatched ground truth with the highest IoU >= threshold, the LAST one among equal
  IoUs, preferring non-ignored ground truths; none is crowd (IoU = intersection / union, pycocotools'
  formula).  A detection matched to an ignored ground truth is ignored; an unmatched one is ignored when
  its area is outside the range or its category is in the image's ``not_exhaustive_category_ids``.
  A match to a ground truth whose ``id`` is 0 counts as no match (lvis tests ``dt_m`` for truth).
* Accumulation: per category and area range all detections by score (ties: image id, then input order),
  cumulative TP/FP, precision = tp / (tp + fp + eps) made monotone from the right, read at 101 recall
  points with ``searchsorted(side="left")`` (0 past the last recall); categories without ground truth
  in the range stay -1.  Summaries average the entries > -1 exactly as ``LVISEval._summarize``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "AREA_LABELS",
    "AREA_RANGES",
    "FREQUENCY_LABELS",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "LvisGroundTruth",
    "as_columnar",
    "cap_detections_per_image",
    "evaluate_columnar",
    "load_lvis_ground_truth",
    "summarize",
]

# lvis.eval.Params, built with the same expressions so the floats are identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2), (96**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")
FREQUENCY_LABELS = ("r", "c", "f")

_NUM_T, _NUM_A = len(IOU_THRESHOLDS), len(AREA_RANGES)
_MATCH_THRESHOLDS = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)  # evaluate_img: iou = min(thr, 1 - 1e-10)
_BIT = (1 << np.arange(_NUM_T)).astype(np.uint16)  # one bit per IoU threshold
_SELECT_CHUNK = 1 << 20  # detections filtered at once
_PAIR_CHUNK = 1 << 20  # (detection, ground truth) IoU pairs computed at once
_STATE_CHUNK = 1 << 20  # problems x areas x thresholds x gt columns in one greedy-matching batch

Columnar = dict[str, np.ndarray]


def as_columnar(results: list[dict] | Columnar) -> Columnar:
    """``{"image_id": (N,) int64, "category_id": (N,) int64, "bbox": (N, 4) float64, "score": (N,) float64}``.

    Accepts COCO-format result dicts or an already columnar dict (arrays are converted, not copied when
    they have the right dtype).  Scores stay float64 so the ranking and its ties are lvis-api's.
    """
    if isinstance(results, dict):
        try:
            columns = {
                "image_id": np.asarray(results["image_id"], dtype=np.int64).reshape(-1),
                "category_id": np.asarray(results["category_id"], dtype=np.int64).reshape(-1),
                "bbox": np.asarray(results["bbox"], dtype=np.float64).reshape(-1, 4),
                "score": np.asarray(results["score"], dtype=np.float64).reshape(-1),
            }
        except KeyError as error:
            raise ValueError(f"columnar results need image_id, category_id, bbox and score: {error}") from None
        sizes = {key: len(value) for key, value in columns.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"columnar results have different lengths: {sizes}")
        return columns
    try:
        rows = [(r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in results]
    except (KeyError, TypeError) as error:
        raise ValueError("every result must be a dict with image_id, category_id, bbox and score") from error
    if not rows:
        return as_columnar({"image_id": [], "category_id": [], "bbox": np.zeros((0, 4)), "score": []})
    image_id, category_id, bbox, score = zip(*rows)
    return as_columnar({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})


def _drop_segmentation(obj: dict) -> dict:
    """json object_hook: polygons are not needed for box AP; dropping them as parsed bounds memory."""
    obj.pop("segmentation", None)
    return obj


def load_lvis_ground_truth(path: str | os.PathLike) -> LvisGroundTruth:
    """Read an LVIS annotation file into ``LvisGroundTruth`` (segmentations are skipped while parsing)."""
    with open(path, encoding="utf-8") as f:
        dataset = json.load(f, object_hook=_drop_segmentation)
    return LvisGroundTruth.from_dataset(dataset)


def _keys(image_index: np.ndarray, cat_index: np.ndarray, num_cats: int) -> np.ndarray:
    """One int64 per (image, category) pair: image_index * K + cat_index."""
    return image_index.astype(np.int64) * num_cats + cat_index


# Dense lookup tables replace binary searches when small enough: ids below _MAX_ID_TABLE (an int64 per
# id) and pair keys below _MAX_KEY_TABLE (a bool per key; LVIS v1 val: 20k x 1203 = 24M).
_MAX_ID_TABLE = 1 << 22
_MAX_KEY_TABLE = 1 << 26


def _index_in(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


class _KeySet:
    """A set of (image, category) keys in [0, size): a bool table when small, else binary search."""

    def __init__(self, keys: np.ndarray, size: int) -> None:
        self.keys = np.unique(keys)
        self.table = None
        if size <= _MAX_KEY_TABLE:
            self.table = np.zeros(size, dtype=bool)
            self.table[self.keys] = True

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[keys]
        return _index_in(self.keys, keys)[1]


@dataclass(frozen=True, eq=False)
class LvisGroundTruth:
    """An LVIS ground truth as arrays.  Ground truths are those lvis-api evaluates (known image and
    category, 0 < area < inf), sorted by (category, image) and in file order within a pair."""

    image_ids: np.ndarray  # (M,) int64, sorted unique
    cat_ids: np.ndarray  # (K,) int64, sorted unique
    cat_names: tuple[str, ...]  # (K,)
    cat_frequency: np.ndarray  # (K,) int64 index into FREQUENCY_LABELS
    gt_image: np.ndarray  # (G,) int64 index into image_ids
    gt_category: np.ndarray  # (G,) int64 index into cat_ids
    gt_boxes: np.ndarray  # (G, 4) float64 xywh
    gt_area: np.ndarray  # (G,) float64, the annotation's area field
    gt_ignore: np.ndarray  # (G,) bool
    gt_ann_id: np.ndarray  # (G,) int64
    neg_keys: np.ndarray  # sorted unique _keys of (image, neg_category_ids)
    not_exhaustive_keys: np.ndarray  # sorted unique _keys of (image, not_exhaustive_category_ids)

    @classmethod
    def from_dataset(cls, dataset: dict) -> LvisGroundTruth:
        """Build from a parsed LVIS annotation dict (``images``, ``annotations``, ``categories``)."""
        cats = {int(cat["id"]): cat for cat in dataset["categories"]}  # lvis: last one wins
        images = {int(img["id"]): img for img in dataset["images"]}
        if not cats:
            raise ValueError("the LVIS ground truth has no categories")
        cat_ids = np.array(sorted(cats), dtype=np.int64)
        image_ids = np.array(sorted(images), dtype=np.int64)
        names, frequency = [], []
        for cat_id in cat_ids.tolist():
            freq = cats[cat_id].get("frequency")
            if freq not in FREQUENCY_LABELS:
                raise ValueError(f"category {cat_id} has frequency {freq!r}; LVIS needs one of r, c, f")
            names.append(str(cats[cat_id].get("name", cat_id)))
            frequency.append(FREQUENCY_LABELS.index(freq))
        num_cats = len(cat_ids)

        lists = {}
        for field in ("neg_category_ids", "not_exhaustive_category_ids"):
            try:
                per_image = [images[i][field] for i in image_ids.tolist()]
            except KeyError as error:
                raise ValueError(f"an image has no {error}: not an LVIS annotation file") from None
            counts = np.array([len(ids) for ids in per_image], dtype=np.int64)
            cat_index, known = _index_in(cat_ids, np.array([c for ids in per_image for c in ids], dtype=np.int64))
            image_index = np.repeat(np.arange(len(image_ids)), counts)
            lists[field] = np.unique(_keys(image_index[known], cat_index[known], num_cats))

        anns = dataset["annotations"]
        ann_id = np.array([a["id"] for a in anns], dtype=np.int64)
        if len(np.unique(ann_id)) != len(ann_id):
            raise ValueError("annotation ids must be unique")
        image_index, image_known = _index_in(image_ids, np.array([a["image_id"] for a in anns], dtype=np.int64))
        cat_index, cat_known = _index_in(cat_ids, np.array([a["category_id"] for a in anns], dtype=np.int64))
        area = np.array([a["area"] for a in anns], dtype=np.float64)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
        keep = np.flatnonzero(image_known & cat_known & (area > 0) & (area < np.inf))
        keep = keep[np.lexsort((image_index[keep], cat_index[keep]))]  # stable: file order within a pair
        return cls(
            image_ids=image_ids,
            cat_ids=cat_ids,
            cat_names=tuple(names),
            cat_frequency=np.array(frequency, dtype=np.int64),
            gt_image=image_index[keep],
            gt_category=cat_index[keep],
            gt_boxes=boxes[keep],
            gt_area=area[keep],
            gt_ignore=ignore[keep],
            gt_ann_id=ann_id[keep],
            neg_keys=lists["neg_category_ids"],
            not_exhaustive_keys=lists["not_exhaustive_category_ids"],
        )

    @cached_property
    def evaluated_pairs(self) -> _KeySet:
        """(image, category) pairs whose detections lvis-api keeps: a ground truth there, or negative."""
        positive = _keys(self.gt_image, self.gt_category, len(self.cat_ids))
        return _KeySet(np.concatenate([positive, self.neg_keys]), len(self.image_ids) * len(self.cat_ids))

    @cached_property
    def not_exhaustive_pairs(self) -> _KeySet:
        return _KeySet(self.not_exhaustive_keys, len(self.image_ids) * len(self.cat_ids))

    @cached_property
    def gt_area_ignore(self) -> np.ndarray:
        """(G, A) bool: ground truth ignored in each area range (inclusive bounds, as lvis)."""
        lo, hi = np.array(AREA_RANGES, dtype=np.float64).T
        area = self.gt_area[:, None]
        return self.gt_ignore[:, None] | (area < lo) | (area > hi)

    @cached_property
    def group_keys(self) -> np.ndarray:
        """(G,) int64 (category, image) group key, ascending: category * M + image."""
        return self.gt_category * len(self.image_ids) + self.gt_image


def _cap_mask(image: np.ndarray, num_images: int, score: np.ndarray, max_dets: int) -> np.ndarray | None:
    """Kept-detection mask of ``LVISResults.limit_dets_per_image`` for dense image indices, None for all."""
    counts = np.bincount(image, minlength=num_images)
    if counts.max(initial=0) <= max_dets:
        return None
    crowded = np.flatnonzero(counts[image] > max_dets)  # only crowded images need sorting
    order = crowded[np.lexsort((-score[crowded], image[crowded]))]  # stable: ties keep input order
    sorted_images = image[order]
    starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.ones(len(image), dtype=bool)
    keep[order[rank >= max_dets]] = False
    return keep


def cap_detections_per_image(image_id: np.ndarray, score: np.ndarray, max_dets: int) -> np.ndarray | None:
    """Indices (ascending) of the detections ``LVISResults.limit_dets_per_image`` keeps, or None for all.

    An image with more than ``max_dets`` detections keeps its ``max_dets`` highest scores, ties in input
    order (Python's ``sorted(..., reverse=True)`` is stable); other images keep everything.
    """
    if len(image_id) == 0:
        return None
    _, image = np.unique(image_id, return_inverse=True)
    keep = _cap_mask(image.reshape(-1), int(image.max()) + 1, np.asarray(score, dtype=np.float64), max_dets)
    return None if keep is None else np.flatnonzero(keep)


@dataclass
class _Detections:
    """Evaluated detections sorted by (category, image, -score, input order)."""

    image: np.ndarray  # (N,) int64 image index
    category: np.ndarray  # (N,) int64 category index
    boxes: np.ndarray  # (N, 4) float64 xywh
    score: np.ndarray  # (N,) float64
    unmatched_ignore: np.ndarray  # (N, A) bool: ignored when unmatched (area outside range or not exhaustive)


def _select(gt: LvisGroundTruth, dets: Columnar, max_dets: int) -> _Detections:
    """Apply lvis-api's per-image cap, then its per-image category filter; sort for grouping.

    Works through the detections in chunks of ``_SELECT_CHUNK`` so that only the kept ones are copied.
    """
    image_id, category_id, boxes, score = (dets[key] for key in ("image_id", "category_id", "bbox", "score"))
    num_dets, num_cats = len(score), len(gt.cat_ids)
    chunks = [slice(start, start + _SELECT_CHUNK) for start in range(0, num_dets, _SELECT_CHUNK)]
    image = np.empty(num_dets, dtype=np.int64)  # (N,) image index
    for part in chunks:
        image[part], known = _index_in(gt.image_ids, image_id[part])
        if not known.all():
            unknown = np.unique(image_id[part][~known])[:10].tolist()
            raise ValueError(f"detections on images {unknown} that are not in the ground truth")
    capped = _cap_mask(image, len(gt.image_ids), score, max_dets)
    kept = []
    for part in chunks:
        index = np.arange(num_dets)[part] if capped is None else part.start + np.flatnonzero(capped[part])
        category, cat_known = _index_in(gt.cat_ids, category_id[index])
        area = boxes[index, 2] * boxes[index, 3]
        keys = _keys(image[index], category, num_cats)
        keep = cat_known & (area > 0) & (area < np.inf)
        keep &= gt.evaluated_pairs.contains(keys)
        kept.append(index[keep])
    index = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    image = image[index]
    category = _index_in(gt.cat_ids, category_id[index])[0]
    order = np.lexsort((-score[index], image, category))  # stable: input order breaks score ties
    index, image, category = index[order], image[order], category[order]
    boxes = boxes[index]
    area = boxes[:, 2] * boxes[:, 3]
    lo, hi = np.array(AREA_RANGES, dtype=np.float64).T
    not_exhaustive = gt.not_exhaustive_pairs.contains(_keys(image, category, num_cats))
    return _Detections(
        image=image,
        category=category,
        boxes=boxes,
        score=score[index],
        unmatched_ignore=(area[:, None] < lo) | (area[:, None] > hi) | not_exhaustive[:, None],
    )


def _pair_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU of paired xywh rows with pycocotools' bbIou arithmetic (same operations, same floats)."""
    dx, dy, dw, dh = det_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (dw * dh + gw * gh - inter)
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _edges(gt: LvisGroundTruth, dets: _Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        iou = _pair_iou(dets.boxes[det], gt.gt_boxes[gt_index])
        keep = iou >= _MATCH_THRESHOLDS.min()
        out_det.append(det[keep])
        out_gt.append(gt_index[keep])
        out_iou.append(iou[keep])
        start = stop
    if not out_det:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_det), np.concatenate(out_gt), np.concatenate(out_iou)


def _greedy(cols: np.ndarray, ious: np.ndarray, steps: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """Greedy matching of a batch of problems, all areas and thresholds at once.

    Args:
        cols, ious: (sum C, K) each candidate detection's edges: ground-truth column (ascending, i.e. file
            order) and IoU, padded with IoU -1.  Rows are step-major: rows [off[j], off[j] + steps[j])
            hold detection j (by score) of problems 0..steps[j]-1 (problems sorted by C descending).
        steps: (max C,) number of problems still active at each step.
        ignore: (P, A, H) ground truth ignored per area range.
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
        matched[p, a, t, best[p, a, t]] = True
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
    def build(cls, gt: LvisGroundTruth, dets: _Detections, edge_det, edge_gt, edge_iou) -> _Problems:
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


def _match(gt: LvisGroundTruth, dets: _Detections) -> tuple[np.ndarray, np.ndarray]:
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
    best = _greedy(cols, ious, steps, ignore)[row]  # (n, A, T), candidate order

    det = problems.cand_det[cand]
    matched = best >= 0
    matched_gt = gt_index[local[:, None, None], np.maximum(best, 0)]  # (n, A, T)
    area = np.arange(_NUM_A)[None, :, None]
    real = matched & (gt.gt_ann_id[matched_gt] != 0)  # lvis keeps the gt id in dt_m: id 0 reads as unmatched
    ignored = (matched & gt.gt_area_ignore[matched_gt, area]) | (~real & dets.unmatched_ignore[det][:, :, None])
    tp_bits[det] = ((real & ~ignored) * _BIT).sum(axis=-1, dtype=np.uint16)
    fp_bits[det] = ((~real & ~ignored) * _BIT).sum(axis=-1, dtype=np.uint16)


def _accumulate(gt: LvisGroundTruth, dets: _Detections, tp_bits, fp_bits) -> tuple[np.ndarray, np.ndarray]:
    """precision (T, R, K, A) and recall (T, K, A) as ``LVISEval.accumulate`` computes them."""
    num_cats = len(gt.cat_ids)
    precision = -np.ones((_NUM_T, len(RECALL_THRESHOLDS), num_cats, _NUM_A))
    recall = -np.ones((_NUM_T, num_cats, _NUM_A))
    num_gt = np.stack(
        [np.bincount(gt.gt_category[~gt.gt_area_ignore[:, a]], minlength=num_cats) for a in range(_NUM_A)], axis=1
    )  # (K, A)
    bounds = np.searchsorted(dets.category, np.arange(num_cats + 1))
    shifts = np.arange(_NUM_T, dtype=np.uint16)[:, None]
    for k in np.flatnonzero(num_gt.any(axis=1)).tolist():
        start, stop = bounds[k], bounds[k + 1]
        order = start + np.argsort(-dets.score[start:stop], kind="stable")  # ties: image, then input order
        num_dets = len(order)
        for a in np.flatnonzero(num_gt[k]).tolist():
            if num_dets == 0:
                precision[:, :, k, a] = 0.0
                recall[:, k, a] = 0.0
                continue
            tp = np.cumsum((tp_bits[order, a] >> shifts) & 1, axis=1, dtype=np.int64).astype(np.float64)
            fp = np.cumsum((fp_bits[order, a] >> shifts) & 1, axis=1, dtype=np.int64).astype(np.float64)
            rc = tp / int(num_gt[k, a])
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
            recall[:, k, a] = rc[:, -1]
            for t in range(_NUM_T):
                at = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                inside = at < num_dets
                precision[t, :, k, a] = np.where(inside, pr[t, np.minimum(at, num_dets - 1)], 0.0)
    return precision, recall


def evaluate_columnar(gt: LvisGroundTruth, dets: Columnar, max_dets: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """precision (T, R, K, A) and recall (T, K, A) of columnar detections, identical to lvis-api's
    ``LVISEval(gt, LVISResults(gt, results, max_dets), "bbox")`` after ``evaluate(); accumulate()``."""
    selected = _select(gt, dets, max_dets)
    tp_bits, fp_bits = _match(gt, selected)
    return _accumulate(gt, selected, tp_bits, fp_bits)


def _mean_valid(values: np.ndarray) -> float:
    """``LVISEval._summarize``: mean over entries > -1, -1 when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if len(valid) else -1.0


def summarize(gt: LvisGroundTruth, precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl, APr, APc, APf and AR, ARs, ARm, ARl as ``LVISEval.summarize``."""
    area = {label: index for index, label in enumerate(AREA_LABELS)}
    t50 = np.flatnonzero(IOU_THRESHOLDS == 0.50)
    t75 = np.flatnonzero(IOU_THRESHOLDS == 0.75)
    metrics = {
        "AP": _mean_valid(precision[:, :, :, area["all"]]),
        "AP50": _mean_valid(precision[t50][:, :, :, area["all"]]),
        "AP75": _mean_valid(precision[t75][:, :, :, area["all"]]),
        "APs": _mean_valid(precision[:, :, :, area["small"]]),
        "APm": _mean_valid(precision[:, :, :, area["medium"]]),
        "APl": _mean_valid(precision[:, :, :, area["large"]]),
    }
    for index, label in enumerate(FREQUENCY_LABELS):
        group = np.flatnonzero(gt.cat_frequency == index)
        metrics[f"AP{label}"] = _mean_valid(precision[:, :, group, area["all"]])
    metrics["AR"] = _mean_valid(recall[:, :, area["all"]])
    for label in ("small", "medium", "large"):
        metrics[f"AR{label[0]}"] = _mean_valid(recall[:, :, area[label]])
    return metrics
