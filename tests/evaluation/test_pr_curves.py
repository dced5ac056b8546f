"""``evaluate(..., pr_curves=True)``: per-class precision at 101 recall points (IoU 0.50, area "all").

Hand case on the shared COCO ground truth: "cat" is found perfectly (precision 1 everywhere), "bird"
(one ground truth) has a false positive ranked above its true positive (precision 1/2 everywhere),
"dog" has no detection (0 everywhere), "fish" has no ground truth (left out).  The curves are also
checked value for value against the reference libraries' own precision arrays.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from detector.evaluation import COCOEvaluator, LVISEvaluator
from detector.evaluation.ap_common import pr_curves_from_precision
from detector.evaluation.lvis_compat import import_lvis

from .conftest import GT_BOXES, make_coco_dict, run_cocoeval

ONE = pytest.approx(1.0, abs=1e-12)  # precision is tp / (tp + fp + eps)


def _hand_results() -> list[dict]:
    results = [
        {"image_id": img, "category_id": cat, "bbox": list(box), "score": 0.95}
        for img, cat, box in GT_BOXES
        if cat == 1
    ]
    bird_box = next(box for _, cat, box in GT_BOXES if cat == 7)
    results += [
        {"image_id": 2, "category_id": 7, "bbox": [0.0, 150.0, 30.0, 30.0], "score": 0.9},  # false positive
        {"image_id": 2, "category_id": 7, "bbox": list(bird_box), "score": 0.8},  # true positive
    ]
    return results


def test_coco_pr_curves_hand_case(gt_file):
    metrics = COCOEvaluator(gt_file).evaluate(_hand_results(), pr_curves=True)
    curves = metrics["pr_curves"]
    assert list(curves) == ["cat", "dog", "bird"]  # fish: no ground truth
    assert all(len(curve) == 101 for curve in curves.values())
    assert curves["cat"] == [ONE] * 101
    assert curves["bird"] == [pytest.approx(0.5, abs=1e-12)] * 101
    assert curves["dog"] == [0.0] * 101
    assert all(isinstance(value, float) for value in curves["bird"])
    json.dumps(metrics)  # plain Python floats, serialisable


def test_coco_pr_curves_equal_cocoeval_precision(gt_file):
    results = _hand_results() + [
        {"image_id": 1, "category_id": 3, "bbox": [205.0, 104.0, 50.0, 60.0], "score": 0.7},
        {"image_id": 3, "category_id": 3, "bbox": [0.0, 0.0, 20.0, 20.0], "score": 0.75},
    ]
    curves = COCOEvaluator(gt_file).evaluate(results, pr_curves=True)["pr_curves"]
    precision = run_cocoeval(make_coco_dict(), results).eval["precision"][0, :, :, 0, -1]  # IoU .5, all, 100
    for k, name in enumerate(["cat", "dog", "bird"]):
        assert curves[name] == precision[:, k].tolist(), name
    assert not (precision[:, 3] > -1).any()  # fish


def test_coco_pr_curves_off_by_default(gt_file):
    assert "pr_curves" not in COCOEvaluator(gt_file).evaluate(_hand_results())


def test_pr_curves_replace_partial_minus_one():
    precision = np.array([[1.0, -1.0, 0.5], [-1.0, -1.0, 0.25]])  # (R=2, K=3)
    assert pr_curves_from_precision(precision, ["a", "b", "c"]) == {"a": [1.0, 0.0], "c": [0.5, 0.25]}
    with pytest.raises(ValueError, match="3 classes"):
        pr_curves_from_precision(precision[:, :2], ["a", "b", "c"])


# ---------------------------------------------------------------------------------------------- LVIS

LVIS_CATEGORIES = [
    {"id": 1, "name": "apple", "frequency": "f"},
    {"id": 4, "name": "bus", "frequency": "c"},
    {"id": 9, "name": "crab", "frequency": "r"},
]
LVIS_IMAGES = [
    {"id": 1, "width": 300, "height": 200, "neg_category_ids": [9], "not_exhaustive_category_ids": []},
    {"id": 2, "width": 300, "height": 200, "neg_category_ids": [], "not_exhaustive_category_ids": []},
]
LVIS_GT = [(1, 1, [10.0, 10.0, 50.0, 40.0]), (2, 1, [100.0, 50.0, 120.0, 100.0]), (2, 4, [5.0, 5.0, 20.0, 20.0])]


@pytest.fixture
def lvis_file(tmp_path):
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3]}
        for i, (img, cat, box) in enumerate(LVIS_GT)
    ]
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps({"images": LVIS_IMAGES, "annotations": annotations, "categories": LVIS_CATEGORIES}))
    return path


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend", ["fast", "lvis-api"])
def test_lvis_pr_curves(lvis_file, backend):
    # apple: FP (0.9) above the two TPs -> tp 0,1,2 / fp 1,1,1 -> precision 0, 1/2, 2/3 -> 2/3 everywhere.
    # bus: perfect.  crab: no ground truth (only a negative image) -> left out.
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [200.0, 100.0, 30.0, 30.0], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 40.0], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [100.0, 50.0, 120.0, 100.0], "score": 0.7},
        {"image_id": 2, "category_id": 4, "bbox": [5.0, 5.0, 20.0, 20.0], "score": 0.6},
        {"image_id": 1, "category_id": 9, "bbox": [0.0, 0.0, 20.0, 20.0], "score": 0.5},
    ]
    curves = LVISEvaluator(lvis_file, backend=backend).evaluate(results, pr_curves=True)["pr_curves"]
    assert list(curves) == ["apple", "bus"]
    assert curves["apple"] == [pytest.approx(2 / 3, abs=1e-12)] * 101
    assert curves["bus"] == [ONE] * 101
    lvis = import_lvis()
    with contextlib.redirect_stdout(io.StringIO()):
        lvis_eval = lvis.LVISEval(str(lvis_file), copy.deepcopy(results), iou_type="bbox")
        lvis_eval.run()
    precision = lvis_eval.eval["precision"][0, :, :, 0]  # IoU 0.50, area all
    assert curves["apple"] == precision[:, 0].tolist()
    assert curves["bus"] == precision[:, 1].tolist()
