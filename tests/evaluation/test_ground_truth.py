"""Ground truth the evaluators refuse or complete, for every backend: repeated annotation ids, negative or
missing areas (errors naming the file and the annotation id), missing iscrowd (read as 0 by both COCO
backends, whose numbers then equal pycocotools' own on the file with iscrowd 0 written out)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from detector.data.coco import CocoDetection
from detector.engine.evaluate import check_evaluable
from detector.evaluation import COCOEvaluator, LVISEvaluator
from detector.evaluation.coco_fast import CocoGroundTruth

from .conftest import GT_BOXES, make_coco_dict, perfect_results, run_cocoeval, write_json
from .test_lvis_evaluator import make_lvis_dict
from .test_lvis_evaluator import perfect_results as lvis_perfect_results

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

COCO_BACKENDS = ("fast", "pycocotools")
LVIS_BACKENDS = ("fast", "lvis-api")


def with_repeated_id(dataset: dict) -> dict:
    dataset["annotations"][3]["id"] = dataset["annotations"][1]["id"]
    return dataset


def test_pycocotools_itself_misscores_a_file_with_a_repeated_id():
    """Why a repeated id is refused: pycocotools scores the ground-truth boxes themselves below AP 1."""
    dataset = with_repeated_id(make_coco_dict())
    assert run_cocoeval(dataset, perfect_results()).stats[0] < 0.9
    assert run_cocoeval(make_coco_dict(), perfect_results()).stats[0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("backend", COCO_BACKENDS)
@pytest.mark.parametrize("change, expected", [
    (with_repeated_id, "annotation id 2 appears twice in 'annotations' (again for image id 2); annotation ids "
                       "must be unique"),
    (lambda d: d["annotations"][2].update(area=-400.0),
     "annotation id 3 (image id 2) has area -400.0; an area must be a finite number >= 0"),
    (lambda d: d["annotations"][2].update(area=float("nan")), "annotation id 3 (image id 2) has area nan"),
    (lambda d: d["annotations"][2].update(iscrowd=2), "annotation id 3 (image id 2) has iscrowd 2, expected 0 or 1"),
    (lambda d: [d["annotations"][i].pop("area") for i in (2, 4)],
     "annotation id 3 (image id 2) has no 'area' (and 1 more annotations); evaluation sorts ground truth into small "
     "/ medium / large by it"),
])
def test_coco_ground_truth_errors_name_file_and_annotation_id(tmp_path, backend, change, expected):
    dataset = make_coco_dict()
    change(dataset)
    gt_file = write_json(tmp_path / "gt.json", dataset)
    with pytest.raises(ValueError) as info:
        COCOEvaluator(gt_file, backend=backend).evaluate(perfect_results())
    assert str(info.value).startswith(f"{gt_file}: {expected}")


def imperfect_results() -> list[dict]:
    """Hits, a shifted box, a duplicate and a false positive, with distinct scores."""
    results = perfect_results()
    for index, result in enumerate(results):
        result["score"] = 0.9 - 0.1 * index
    results[1]["bbox"] = [210.0, 110.0, 50.0, 60.0]  # IoU ~0.56 with its ground truth
    results.append({"image_id": 1, "category_id": 1, "bbox": [12.0, 22.0, 100.0, 150.0], "score": 0.95})
    results.append({"image_id": 3, "category_id": 7, "bbox": [0.0, 0.0, 30.0, 30.0], "score": 0.7})
    return results


def test_missing_iscrowd_is_zero_for_both_backends_as_pycocotools_scores_it_written_out(tmp_path):
    dataset = make_coco_dict(gt_boxes=[*GT_BOXES, (3, 7, [0.0, 0.0, 50.0, 50.0])])
    dataset["annotations"][5]["iscrowd"] = 1  # one crowd region kept, the others lose the key
    reference = run_cocoeval(dataset, imperfect_results())  # pycocotools on the complete file
    for ann in dataset["annotations"][:5]:
        del ann["iscrowd"]
    gt_file = write_json(tmp_path / "gt.json", dataset)
    arrays = {}
    for backend in COCO_BACKENDS:
        evaluator = COCOEvaluator(gt_file, backend=backend)
        metrics = evaluator.evaluate(imperfect_results())
        assert metrics["AP"] == pytest.approx(reference.stats[0], abs=1e-12)
        assert 0.2 < metrics["AP"] < 0.95
        arrays[backend] = evaluator._run_fast if backend == "fast" else evaluator._run_pycocotools
    columns = evaluator._restrict(imperfect_results())
    fast_precision, fast_recall = arrays["fast"](columns)
    coco_precision, coco_recall = arrays["pycocotools"](columns)
    np.testing.assert_array_equal(fast_precision, coco_precision)
    np.testing.assert_array_equal(fast_recall, coco_recall)
    np.testing.assert_array_equal(fast_precision, reference.eval["precision"])


def test_an_already_loaded_coco_is_checked_and_completed_in_place():
    dataset = make_coco_dict()
    for ann in dataset["annotations"]:
        del ann["iscrowd"]
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    evaluator = COCOEvaluator.from_coco(coco, backend="pycocotools")
    assert all(ann["iscrowd"] == 0 for ann in coco.anns.values())
    assert evaluator.evaluate(perfect_results())["AP"] == pytest.approx(1.0, abs=1e-12)
    coco.dataset["annotations"][0]["area"] = -1
    with pytest.raises(ValueError, match=r"^the ground truth: annotation id 1 \(image id 1\) has area -1"):
        COCOEvaluator.from_coco(coco)


def test_fast_ground_truth_names_its_source():
    with pytest.raises(ValueError, match=r"^val\.json: annotation id 2 appears twice"):
        CocoGroundTruth.from_dataset(with_repeated_id(make_coco_dict()), source="val.json")


@pytest.mark.parametrize("backend", LVIS_BACKENDS)
@pytest.mark.parametrize("change, expected", [
    (lambda d: d["annotations"][2].update(id=1), "annotation id 1 appears twice in 'annotations' (again for image "
                                                 "id 2)"),
    (lambda d: d["annotations"][1].update(area=-5), "annotation id 2 (image id 2) has area -5; an area must be"),
    (lambda d: d["annotations"][3].pop("area"), "annotation id 4 (image id 3) has no 'area'; evaluation sorts"),
])
def test_lvis_ground_truth_errors_name_file_and_annotation_id(tmp_path, backend, change, expected):
    dataset = make_lvis_dict()
    change(dataset)
    gt_file = tmp_path / "lvis_gt.json"
    gt_file.write_text(json.dumps(dataset))
    with pytest.raises(ValueError) as info:
        LVISEvaluator(gt_file, backend=backend).evaluate(lvis_perfect_results())
    assert str(info.value).startswith(f"{gt_file}: {expected}")


def test_lvis_zero_areas_are_still_dropped_as_lvis_api_does(tmp_path):
    dataset = make_lvis_dict()
    dataset["annotations"][2]["area"] = 0  # the crab: no ground truth left, APr has none
    gt_file = tmp_path / "lvis_gt.json"
    gt_file.write_text(json.dumps(dataset))
    metrics = [LVISEvaluator(gt_file, backend=b).evaluate(copy.deepcopy(lvis_perfect_results())) for b in LVIS_BACKENDS]
    assert metrics[0]["APr"] == metrics[1]["APr"] == -1.0
    assert metrics[0]["AP"] == pytest.approx(metrics[1]["AP"], abs=1e-12)


def test_evaluation_stops_before_inference_when_the_val_file_lacks_areas(tmp_path):
    dataset = make_coco_dict()
    for index in (1, 3):
        del dataset["annotations"][index]["area"]
    gt_file = write_json(tmp_path / "val.json", dataset)
    reader = CocoDetection(str(gt_file), None)
    assert reader.stats["num_without_area"] == 2
    with pytest.raises(ValueError) as info:
        check_evaluable(reader)
    assert str(info.value).startswith(f"{gt_file}: annotation id 2 (image id 1) has no 'area' (and 1 more "
                                      "annotations)")
    check_evaluable(CocoDetection(str(write_json(tmp_path / "ok.json", make_coco_dict())), None))
