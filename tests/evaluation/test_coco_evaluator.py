"""COCOEvaluator against hand-computed AP and against pycocotools' COCOeval run directly."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pytest
from pycocotools.coco import COCO

from detector.evaluation import COCOEvaluator

from .conftest import GT_BOXES, make_coco_dict, perfect_results, run_cocoeval, write_json

# pycocotools computes precision as tp / (tp + fp + eps), so "perfect" is 1 - 2e-16, not exactly 1.
ONE = pytest.approx(1.0, abs=1e-12)
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")
STATS_KEYS = (*HEADLINE, "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(params=["pycocotools", "fast"])
def backend(request) -> str:
    """Every test runs on both COCOEvaluator backends."""
    return request.param


def _pycocotools_stats(results) -> np.ndarray:
    """pycocotools' own numbers on the shared ground truth with default parameters."""
    return run_cocoeval(make_coco_dict(), results).stats


def _noisy_results() -> list[dict]:
    """Jittered true positives, duplicates, misses and wrong classes with varied scores."""
    rng = np.random.default_rng(0)
    results = []
    for image_id, cat_id, (x, y, w, h) in GT_BOXES:
        for _ in range(3):
            dx, dy, dw, dh = rng.uniform(-0.25, 0.25, size=4) * np.array([w, h, w, h])
            results.append(
                {
                    "image_id": image_id,
                    "category_id": cat_id,
                    "bbox": [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)],
                    "score": float(rng.uniform(0.05, 1.0)),
                }
            )
        results.append(
            {"image_id": image_id, "category_id": 7 if cat_id != 7 else 1, "bbox": [x, y, w, h], "score": 0.6}
        )
    results.append({"image_id": 3, "category_id": 3, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.99})
    return results


def test_perfect_detections_give_one(gt_file, backend):
    metrics = COCOEvaluator(str(gt_file), backend=backend).evaluate(perfect_results(), per_class=True)
    for key in STATS_KEYS:
        assert metrics[key] == ONE, key
    # "fish" has no ground truth: no AP (None), not 0.
    assert metrics["per_class"] == {"cat": ONE, "dog": ONE, "bird": ONE, "fish": None}


def test_area_range_without_ground_truth_is_minus_one(tmp_path, backend):
    gt = make_coco_dict(gt_boxes=[(1, 1, [10.0, 20.0, 100.0, 150.0])])  # one large box
    evaluator = COCOEvaluator(write_json(tmp_path / "gt.json", gt), backend=backend)
    metrics = evaluator.evaluate(perfect_results(gt_boxes=[(1, 1, [10.0, 20.0, 100.0, 150.0])]))
    for key in ("AP", "AP50", "AP75", "APl"):
        assert metrics[key] == ONE, key
    assert metrics["APs"] == metrics["APm"] == -1.0


def test_matches_pycocotools_exactly(gt_file, backend):
    results = _noisy_results()
    metrics = COCOEvaluator(gt_file, backend=backend).evaluate(results)
    stats = _pycocotools_stats(results)
    assert 0.0 < metrics["AP"] < 1.0
    for index, key in enumerate(STATS_KEYS):
        assert metrics[key] == stats[index], key


def test_hand_computed_ap(tmp_path, backend):
    # One image, two "cat" boxes. Ranked detections: hit (0.9), miss (0.8), hit (0.7):
    # precision/recall steps (1, 0.5), (0.5, 0.5), (2/3, 1). Interpolated precision is 1 at the
    # 51 recall points 0.00..0.50 and 2/3 at the 50 points 0.51..1.00, at every IoU threshold.
    gt_boxes = [(1, 1, [0.0, 0.0, 50.0, 50.0]), (1, 1, [100.0, 100.0, 50.0, 50.0])]
    gt_file = write_json(tmp_path / "gt.json", make_coco_dict(gt_boxes=gt_boxes))
    evaluator = COCOEvaluator(gt_file, backend=backend)
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 50.0], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [300.0, 300.0, 50.0, 50.0], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [100.0, 100.0, 50.0, 50.0], "score": 0.7},
    ]
    metrics = evaluator.evaluate(results, per_class=True)
    expected = (51 * 1.0 + 50 * (2.0 / 3.0)) / 101
    assert metrics["AP"] == pytest.approx(expected, abs=1e-12)
    assert metrics["AP50"] == pytest.approx(expected, abs=1e-12)
    assert metrics["APm"] == pytest.approx(expected, abs=1e-12)
    assert metrics["AR100"] == 1.0
    assert metrics["AR1"] == 0.5
    assert metrics["per_class"]["cat"] == pytest.approx(expected, abs=1e-12)


def test_per_class_perfect_and_all_miss(gt_file, backend):
    results = [r for r in perfect_results() if r["category_id"] != 3]
    # Every "dog" detection misses its ground truth.
    results += [
        {"image_id": 1, "category_id": 3, "bbox": [400.0, 300.0, 50.0, 60.0], "score": 0.9},
        {"image_id": 3, "category_id": 3, "bbox": [0.0, 0.0, 20.0, 20.0], "score": 0.8},
    ]
    per_class = COCOEvaluator(gt_file, backend=backend).evaluate(results, per_class=True)["per_class"]
    assert per_class["cat"] == ONE
    assert per_class["bird"] == ONE
    assert per_class["dog"] == 0.0
    assert per_class["fish"] is None


def test_empty_results_give_zeros(gt_file, caplog, backend):
    with caplog.at_level(logging.WARNING, logger="detector.evaluation"):
        metrics = COCOEvaluator(gt_file, backend=backend).evaluate([], per_class=True)
    for key in STATS_KEYS:
        assert metrics[key] == 0.0, key
    assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": 0.0, "fish": None}
    assert "no detections" in caplog.text


def test_max_dets_caps_detections_per_image(tmp_path, backend):
    # One ground truth; the top-scoring detection misses, the second one hits.
    gt_boxes = [(1, 1, [10.0, 10.0, 60.0, 60.0])]
    gt_file = write_json(tmp_path / "gt.json", make_coco_dict(gt_boxes=gt_boxes))
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [300.0, 300.0, 60.0, 60.0], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 60.0, 60.0], "score": 0.8},
    ]
    # All detections: precision 1/2 at recall 1 -> AP 0.5.
    metrics = COCOEvaluator(gt_file, max_dets=100, backend=backend).evaluate(results)
    assert metrics["AP"] == pytest.approx(0.5, abs=1e-12)
    # Only the top detection counts: nothing is found.
    metrics_top1 = COCOEvaluator(gt_file, max_dets=1, backend=backend).evaluate(results)
    assert metrics_top1["AP"] == 0.0
    assert metrics_top1["AR1"] == 0.0
    assert "AR10" not in metrics_top1 and "AR100" not in metrics_top1
    # max_dets=2 is the "last" threshold: headline AP and AR2 use both detections.
    metrics_top2 = COCOEvaluator(gt_file, max_dets=2, backend=backend).evaluate(results)
    assert metrics_top2["AP"] == pytest.approx(0.5, abs=1e-12)
    assert metrics_top2["AR2"] == 1.0 and metrics_top2["AR1"] == 0.0


def test_max_dets_300_keys(gt_file, backend):
    metrics = COCOEvaluator(gt_file, max_dets=300, backend=backend).evaluate(perfect_results())
    assert metrics["AP"] == ONE
    assert metrics["AR300"] == 1.0 and "AR100" not in metrics


def test_results_restricted_to_evaluated_images(gt_file, caplog, backend):
    # Image 1 only; detections on image 2 and on an unknown image 999 are dropped (no crash).
    evaluator = COCOEvaluator(gt_file, image_ids=[1], backend=backend)
    results = perfect_results() + [
        {"image_id": 999, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 1.0}
    ]
    with caplog.at_level(logging.WARNING, logger="detector.evaluation"):
        metrics = evaluator.evaluate(results, per_class=True)
    assert metrics["AP"] == ONE
    assert metrics["APs"] == -1.0  # the only small box is on image 2
    assert metrics["per_class"]["bird"] is None  # birds only appear on image 2
    assert "dropped 4 of 6" in caplog.text
    assert evaluator.image_ids == [1]


def test_unknown_evaluation_image_raises(gt_file, backend):
    with pytest.raises(ValueError, match=r"\[5\]"):
        COCOEvaluator(gt_file, image_ids=[1, 5], backend=backend)


def test_missing_annotation_file(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        COCOEvaluator(tmp_path / "absent.json", backend=backend)


def test_from_coco_and_quiet_stdout(gt_file, capsys, caplog, backend):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
    evaluator = COCOEvaluator.from_coco(coco, max_dets=100, backend=backend)
    assert evaluator.cat_ids == [1, 3, 7, 9]
    assert evaluator.image_ids == [1, 2, 3]
    results = _noisy_results()
    with caplog.at_level(logging.DEBUG, logger="detector.evaluation"):
        metrics = evaluator.evaluate(results)
    assert capsys.readouterr().out == ""
    if backend == "pycocotools":
        assert "Accumulating evaluation results" in caplog.text  # pycocotools' prints, logged at DEBUG
    assert metrics == COCOEvaluator(gt_file, backend=backend).evaluate(results)
    # The caller's result dicts are not mutated by loadRes.
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
