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
* Matching and accumulation (``evaluate_img``, ``accumulate``) follow the rules pycocotools shares,
  implemented once in ``box_matching``: no ground truth is a crowd; an unmatched detection is also
  ignored when its category is in the image's ``not_exhaustive_category_ids``; all detections kept at
  loading count (no per-(image, category) cap).  Summaries average the entries > -1 exactly as
  ``LVISEval._summarize``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .ap_common import mean_valid as _mean_valid
from .box_matching import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    BoxGroundTruth,
    Detections,
    accumulate,
    index_in,
    match,
)
from .columnar import Columnar, as_columnar
from .ground_truth import check_ground_truth

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

FREQUENCY_LABELS = ("r", "c", "f")
_SELECT_CHUNK = 1 << 20  # detections filtered at once



def _drop_segmentation(obj: dict) -> dict:
    """json object_hook: polygons are not needed for box AP; dropping them as parsed bounds memory."""
    obj.pop("segmentation", None)
    return obj


def load_lvis_ground_truth(path: str | os.PathLike) -> LvisGroundTruth:
    """Read an LVIS annotation file into ``LvisGroundTruth`` (segmentations are skipped while parsing)."""
    with open(path, encoding="utf-8") as f:
        dataset = json.load(f, object_hook=_drop_segmentation)
    return LvisGroundTruth.from_dataset(dataset, source=os.fspath(path))


def _keys(image_index: np.ndarray, cat_index: np.ndarray, num_cats: int) -> np.ndarray:
    """One int64 per (image, category) pair: image_index * K + cat_index."""
    return image_index.astype(np.int64) * num_cats + cat_index


# Pair keys below _MAX_KEY_TABLE use a bool table (LVIS v1 val: 20k x 1203 = 24M).
_MAX_KEY_TABLE = 1 << 26


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
        return index_in(self.keys, keys)[1]


@dataclass(frozen=True, eq=False)
class LvisGroundTruth(BoxGroundTruth):
    """An LVIS ground truth as arrays.  Ground truths are those lvis-api evaluates (known image and
    category, 0 < area < inf), sorted by (category, image) and in file order within a pair; none is a
    crowd, ``gt_ignore`` is the annotation's ``ignore`` field."""

    cat_frequency: np.ndarray  # (K,) int64 index into FREQUENCY_LABELS
    neg_keys: np.ndarray  # sorted unique _keys of (image, neg_category_ids)
    not_exhaustive_keys: np.ndarray  # sorted unique _keys of (image, not_exhaustive_category_ids)

    @classmethod
    def from_dataset(cls, dataset: dict, source: str = "the ground truth") -> LvisGroundTruth:
        """Build from a parsed LVIS annotation dict (``images``, ``annotations``, ``categories``), checked
        first by ``ground_truth.check_ground_truth`` (errors start with ``source``)."""
        check_ground_truth(dataset, source, has_crowd=False)
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
            cat_index, known = index_in(cat_ids, np.array([c for ids in per_image for c in ids], dtype=np.int64))
            image_index = np.repeat(np.arange(len(image_ids)), counts)
            lists[field] = np.unique(_keys(image_index[known], cat_index[known], num_cats))

        anns = dataset["annotations"]
        ann_id = np.array([a["id"] for a in anns], dtype=np.int64)
        image_index, image_known = index_in(image_ids, np.array([a["image_id"] for a in anns], dtype=np.int64))
        cat_index, cat_known = index_in(cat_ids, np.array([a["category_id"] for a in anns], dtype=np.int64))
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
            gt_crowd=np.zeros(len(keep), dtype=bool),
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


def _select(gt: LvisGroundTruth, dets: Columnar, max_dets: int) -> Detections:
    """Apply lvis-api's per-image cap, then its per-image category filter; sort for grouping.

    Works through the detections in chunks of ``_SELECT_CHUNK`` so that only the kept ones are copied.
    """
    image_id, category_id, boxes, score = (dets[key] for key in ("image_id", "category_id", "bbox", "score"))
    num_dets, num_cats = len(score), len(gt.cat_ids)
    chunks = [slice(start, start + _SELECT_CHUNK) for start in range(0, num_dets, _SELECT_CHUNK)]
    image = np.empty(num_dets, dtype=np.int64)  # (N,) image index
    for part in chunks:
        image[part], known = index_in(gt.image_ids, image_id[part])
        if not known.all():
            unknown = np.unique(image_id[part][~known])[:10].tolist()
            raise ValueError(f"detections on images {unknown} that are not in the ground truth")
    capped = _cap_mask(image, len(gt.image_ids), score, max_dets)
    kept = []
    for part in chunks:
        index = np.arange(num_dets)[part] if capped is None else part.start + np.flatnonzero(capped[part])
        category, cat_known = index_in(gt.cat_ids, category_id[index])
        area = boxes[index, 2] * boxes[index, 3]
        keys = _keys(image[index], category, num_cats)
        keep = cat_known & (area > 0) & (area < np.inf)
        keep &= gt.evaluated_pairs.contains(keys)
        kept.append(index[keep])
    index = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    image = image[index]
    category = index_in(gt.cat_ids, category_id[index])[0]
    order = np.lexsort((-score[index], image, category))  # stable: input order breaks score ties
    index, image, category = index[order], image[order], category[order]
    boxes = boxes[index]
    area = boxes[:, 2] * boxes[:, 3]
    lo, hi = np.array(AREA_RANGES, dtype=np.float64).T
    not_exhaustive = gt.not_exhaustive_pairs.contains(_keys(image, category, num_cats))
    return Detections(
        image=image,
        category=category,
        boxes=boxes,
        score=score[index],
        unmatched_ignore=(area[:, None] < lo) | (area[:, None] > hi) | not_exhaustive[:, None],
    )


def evaluate_columnar(gt: LvisGroundTruth, dets: Columnar, max_dets: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """precision (T, R, K, A) and recall (T, K, A) of columnar detections, identical to lvis-api's
    ``LVISEval(gt, LVISResults(gt, results, max_dets), "bbox")`` after ``evaluate(); accumulate()``."""
    selected = _select(gt, dets, max_dets)
    tp_bits, fp_bits = match(gt, selected)
    precision, recall = accumulate(gt, selected, tp_bits, fp_bits)
    return precision[..., 0], recall[..., 0]


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
