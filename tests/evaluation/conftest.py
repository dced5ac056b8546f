"""Shared hand-made COCO ground truth for the evaluation tests.

Categories have non-contiguous ids (1, 3, 7, 9); "fish" (9) has no annotation at all.
Boxes are [x, y, w, h]; areas cover the small (< 32^2), medium and large (> 96^2) ranges.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORIES = [
    {"id": 1, "name": "cat"},
    {"id": 3, "name": "dog"},
    {"id": 7, "name": "bird"},
    {"id": 9, "name": "fish"},
]
IMAGES = [
    {"id": 1, "width": 640, "height": 480, "file_name": "a.png"},
    {"id": 2, "width": 320, "height": 240, "file_name": "b.png"},
    {"id": 3, "width": 100, "height": 100, "file_name": "c.png"},
]
# (image_id, category_id, [x, y, w, h])
GT_BOXES = [
    (1, 1, [10.0, 20.0, 100.0, 150.0]),  # large
    (1, 3, [200.0, 100.0, 50.0, 60.0]),  # medium
    (2, 1, [5.0, 5.0, 20.0, 20.0]),  # small
    (2, 7, [100.0, 50.0, 80.0, 90.0]),  # medium
    (3, 3, [30.0, 30.0, 60.0, 60.0]),  # medium
]


def make_coco_dict(
    gt_boxes: list[tuple[int, int, list[float]]] = GT_BOXES,
    images: list[dict] = IMAGES,
    categories: list[dict] = CATEGORIES,
) -> dict:
    """A COCO ground-truth dict with ``area`` = w * h and ``iscrowd`` = 0."""
    annotations = [
        {
            "id": index + 1,
            "image_id": image_id,
            "category_id": cat_id,
            "bbox": list(bbox),
            "area": bbox[2] * bbox[3],
            "iscrowd": 0,
        }
        for index, (image_id, cat_id, bbox) in enumerate(gt_boxes)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload))
    return path


def perfect_results(gt_boxes: list[tuple[int, int, list[float]]] = GT_BOXES) -> list[dict]:
    """Every ground-truth box as a detection with score 1."""
    return [
        {"image_id": image_id, "category_id": cat_id, "bbox": list(bbox), "score": 1.0}
        for image_id, cat_id, bbox in gt_boxes
    ]


def run_cocoeval(dataset: dict, results: list[dict], max_dets=(1, 10, 100)) -> COCOeval:
    """pycocotools' own evaluate + accumulate + summarize on copies of the inputs (stdout silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dataset)
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    """The shared ground truth written to ``tmp_path/gt.json``."""
    return write_json(tmp_path / "gt.json", make_coco_dict())
