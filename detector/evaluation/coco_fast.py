"""Vectorised COCO box evaluation that reproduces pycocotools' ``COCOeval`` (iouType "bbox") exactly.

pycocotools loops in Python over every (image, category, area range) triple and, inside, over every
detection x ground truth x IoU threshold; COCO val (5k images, 80 classes, 100 detections per image)
takes over a minute.  This module works on numpy arrays and follows ``COCOeval``'s rules (read from
pycocotools/cocoeval.py and coco.py), so the precision and recall arrays are bit-identical:

* Loading (``COCO.loadRes``): detection area = w * h, ``iscrowd`` 0; ids follow input order.
* Selection (``_prepare``): ground truths on the evaluated images and categories, in file order within
  an (image, category) pair; ``ignore`` = ``iscrowd`` (an annotation's own ``ignore`` field is
  overwritten); area ranges use the annotation's ``area`` field, inclusive bounds.
* Per (image, category): detections sorted by score with a stable sort (mergesort on -score: ties keep
  input order) and cut at the largest ``maxDets`` -- the cap is per (image, category), not per image.
* Matching (``evaluateImg``) and accumulation: ``box_matching`` (crowds absorb many detections with
  IoU = intersection / detection area; non-crowd ground truths are preferred; detections matched to an
  ignored ground truth, or unmatched and outside the area range, are ignored).  For each smaller
  ``maxDets`` entry, ``accumulate`` keeps the first entries of each pair's score-sorted list, as
  ``COCOeval.accumulate`` slices ``dtScores[0:maxDet]``.
* Summaries: the mean over entries > -1 of the precision / recall slices ``COCOeval.summarize`` reads,
  at the largest ``maxDets`` for AP and ARs/ARm/ARl (``summarize`` itself hard-codes 100).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ap_common import mean_valid
from .box_matching import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    BoxGroundTruth,
    Detections,
    accumulate,
    index_in,
    match,
)
from .columnar import Columnar, as_columnar
from .ground_truth import check_ground_truth

__all__ = ["CocoGroundTruth", "evaluate_coco", "summarize_coco"]


@dataclass(frozen=True, eq=False)
class CocoGroundTruth(BoxGroundTruth):
    """A COCO ground truth as arrays: the annotations ``COCOeval`` evaluates, sorted by (category, image)
    and in file order within a pair; ``gt_crowd`` = ``gt_ignore`` = ``iscrowd``."""

    @classmethod
    def from_dataset(
        cls,
        dataset: dict,
        image_ids: list[int] | None = None,
        cat_ids: list[int] | None = None,
        source: str = "the ground truth",
        checked: bool = False,
    ) -> CocoGroundTruth:
        """Build from a parsed COCO annotation dict; ``image_ids`` / ``cat_ids`` restrict the evaluation
        (default: every image / category of the file). Unless ``checked``, the annotations are first checked
        by ``ground_truth.check_ground_truth`` (errors start with ``source``; a missing ``iscrowd`` becomes 0)."""
        if not checked:
            check_ground_truth(dataset, source)
        cats = {int(cat["id"]): cat for cat in dataset.get("categories", [])}  # pycocotools: last one wins
        all_images = sorted({int(img["id"]) for img in dataset.get("images", [])})
        image_ids = np.array(sorted(set(all_images if image_ids is None else image_ids)), dtype=np.int64)
        cat_ids = np.array(sorted(set(cats if cat_ids is None else cat_ids)), dtype=np.int64)
        anns = dataset.get("annotations", [])
        try:
            ann_id = np.array([a["id"] for a in anns], dtype=np.int64)
            image_index, image_known = index_in(image_ids, np.array([a["image_id"] for a in anns], dtype=np.int64))
            cat_index, cat_known = index_in(cat_ids, np.array([a["category_id"] for a in anns], dtype=np.int64))
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"every COCO annotation needs id, image_id, category_id and a 4-number bbox: {error}")
        area = np.array([a["area"] for a in anns], dtype=np.float64)
        crowd = np.array([bool(a["iscrowd"]) for a in anns], dtype=bool)
        keep = np.flatnonzero(image_known & cat_known)
        keep = keep[np.lexsort((image_index[keep], cat_index[keep]))]  # stable: file order within a pair
        return cls(
            image_ids=image_ids,
            cat_ids=cat_ids,
            cat_names=tuple(str(cats[c].get("name", c)) if c in cats else str(c) for c in cat_ids.tolist()),
            gt_image=image_index[keep],
            gt_category=cat_index[keep],
            gt_boxes=boxes[keep],
            gt_area=area[keep],
            gt_ignore=crowd[keep],
            gt_crowd=crowd[keep],
            gt_ann_id=ann_id[keep],
        )


def _select(gt: CocoGroundTruth, dets: Columnar, max_det: int) -> Detections:
    """Detections on evaluated images and categories, sorted by (category, image, -score, input order)
    and cut at ``max_det`` per (image, category) pair."""
    image, image_known = index_in(gt.image_ids, dets["image_id"])
    category, cat_known = index_in(gt.cat_ids, dets["category_id"])
    if not (image_known & cat_known).all():
        unknown = np.unique(dets["image_id"][~image_known])[:10].tolist()
        unknown_cats = np.unique(dets["category_id"][~cat_known])[:10].tolist()
        raise ValueError(f"detections on images {unknown} / categories {unknown_cats} that are not evaluated")
    score = dets["score"]
    order = np.lexsort((-score, image, category))  # stable: input order breaks score ties (mergesort)
    group = category[order] * len(gt.image_ids) + image[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else np.zeros(0, np.int64)
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    order = order[rank < max_det]
    boxes = dets["bbox"][order]
    area = boxes[:, 2] * boxes[:, 3]  # loadRes: bb[2] * bb[3]
    lo, hi = np.array(AREA_RANGES, dtype=np.float64).T
    return Detections(
        image=image[order],
        category=category[order],
        boxes=boxes,
        score=score[order],
        unmatched_ignore=(area[:, None] < lo) | (area[:, None] > hi),
    )


def evaluate_coco(
    gt: CocoGroundTruth, dets: list[dict] | Columnar, max_dets: tuple[int, ...] = (1, 10, 100)
) -> tuple[np.ndarray, np.ndarray]:
    """precision (T, R, K, A, M) and recall (T, K, A, M) identical to ``COCOeval.eval`` after
    ``evaluate(); accumulate()`` with ``params.imgIds = gt.image_ids``, ``catIds = gt.cat_ids`` and
    ``maxDets = max_dets``.  Every detection must be on an evaluated image and category."""
    max_dets = tuple(sorted(int(m) for m in max_dets))
    selected = _select(gt, as_columnar(dets), max_dets[-1])
    tp_bits, fp_bits = match(gt, selected)
    return accumulate(gt, selected, tp_bits, fp_bits, max_dets)


def summarize_coco(precision: np.ndarray, recall: np.ndarray, max_dets: list[int]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl at the largest of ``max_dets``, AR<m> for each m, ARs, ARm, ARl, averaged
    as ``COCOeval.summarize`` (mean over entries > -1; -1.0 when there are none)."""
    area = {label: index for index, label in enumerate(AREA_LABELS)}
    t50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.50))[0])
    t75 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.75))[0])
    top = len(max_dets) - 1
    metrics = {
        "AP": mean_valid(precision[:, :, :, area["all"], top]),
        "AP50": mean_valid(precision[t50, :, :, area["all"], top]),
        "AP75": mean_valid(precision[t75, :, :, area["all"], top]),
        "APs": mean_valid(precision[:, :, :, area["small"], top]),
        "APm": mean_valid(precision[:, :, :, area["medium"], top]),
        "APl": mean_valid(precision[:, :, :, area["large"], top]),
    }
    for index, cap in enumerate(max_dets):
        metrics[f"AR{cap}"] = mean_valid(recall[:, :, area["all"], index])
    for label in ("small", "medium", "large"):
        metrics[f"AR{label[0]}"] = mean_valid(recall[:, :, area[label], top])
    return metrics
