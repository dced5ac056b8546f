"""What the evaluators require of a ground-truth file, checked before any scoring, with file and ids named.

pycocotools and lvis-api read whatever they are given: with a repeated annotation id pycocotools scores
perfect detections far below AP 1 (its index keeps one annotation per id, its evaluation both), an
annotation without ``area`` or ``iscrowd`` ends in a bare ``KeyError`` deep inside ``COCOeval``, and a
negative ``area`` silently moves a ground truth out of every area range (COCO then ignores it; LVIS drops
it). :func:`check_ground_truth` runs before either backend (``fast`` or the official one) sees a file:

* every annotation is an object with an integer ``id``, unique in the file;
* ``area`` is present, a finite number >= 0 (COCO sorts ground truth into small / medium / large by it;
  LVIS counts only 0 < area);
* ``iscrowd`` (COCO) is 0 or 1; when absent it is **set to 0 in the loaded dict**, which is what the COCO
  format means by a missing flag and what the fast backend always assumed, so both backends give the same
  numbers (LVIS has no crowd annotations and never reads it).

Every error is a ``ValueError`` starting with the file (or the ``source`` given) and naming the
annotation id and its image id.
"""

from __future__ import annotations

import math

__all__ = ["check_ground_truth", "missing_area_message"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def missing_area_message(source: str, ann_id, image_id, num_missing: int) -> str:
    """The error for ground truth without ``area`` (shared by the evaluators and the early check before
    inference in :func:`detector.engine.evaluate.evaluate_model`)."""
    more = f" (and {num_missing - 1} more annotations)" if num_missing > 1 else ""
    return (f"{source}: annotation id {ann_id} (image id {image_id}) has no 'area'{more}; evaluation sorts ground "
            "truth into small / medium / large by it: add it to every annotation (the mask area in pixels, or "
            "w * h of the bbox for box-only data)")


def check_ground_truth(dataset: dict, source: str = "the ground truth", has_crowd: bool = True) -> dict:
    """Check the annotations of a loaded COCO / LVIS dict as the module says; fill a missing ``iscrowd``
    with 0 when ``has_crowd`` (COCO). Returns ``dataset`` (changed in place).

    Raises:
        ValueError: naming ``source``, the annotation id and its image id.
    """
    annotations = dataset.get("annotations") if isinstance(dataset, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f"{source}: not a detection ground truth (no list of 'annotations')")
    seen: set[int] = set()
    without_area = []
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise ValueError(f"{source}: annotation entry {index} ({str(ann)[:80]}) needs an integer 'id'")
        ann_id = ann["id"]
        where = f"annotation id {ann_id} (image id {ann.get('image_id')})"
        if ann_id in seen:
            raise ValueError(f"{source}: annotation id {ann_id} appears twice in 'annotations' (again for image id "
                             f"{ann.get('image_id')}); annotation ids must be unique")
        seen.add(ann_id)
        if "area" not in ann:
            without_area.append(ann)
        elif not (_is_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
            raise ValueError(f"{source}: {where} has area {ann['area']!r}; an area must be a finite number >= 0")
        if has_crowd:
            crowd = ann.setdefault("iscrowd", 0)
            if crowd not in (0, 1):
                raise ValueError(f"{source}: {where} has iscrowd {crowd!r}, expected 0 or 1")
    if without_area:
        first = without_area[0]
        raise ValueError(missing_area_message(source, first["id"], first.get("image_id"), len(without_area)))
    return dataset
