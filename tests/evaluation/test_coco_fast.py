"""The vectorised COCO evaluator against pycocotools' COCOeval itself: bit-identical on many random files.

The random files exercise COCOeval's rules: crowd regions (several detections inside one, crowds that
overlap real boxes), ``area`` fields that differ from the box area or sit exactly on a range boundary,
tiny and huge (> 1e5 px side, outside every area range) boxes, exact IoU ties between duplicated ground
truths, an annotation id 0, score ties, more detections in an (image, category) pair than maxDets,
zero-width and negative-size detections, images without ground truth or detections, categories without
ground truth or without detections, and non-contiguous image / category ids.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from detector.evaluation import COCOEvaluator
from detector.evaluation.coco_fast import CocoGroundTruth, evaluate_coco, summarize_coco

from .conftest import make_coco_dict, perfect_results, run_cocoeval, write_json

STATS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def random_coco(seed: int, num_images: int = 8, num_cats: int = 6) -> tuple[dict, list[dict]]:
    """A random COCO ground truth and detections full of COCOeval's corner cases."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 30), size=num_cats, replace=False).tolist())
    image_ids = sorted(rng.choice(np.arange(1, 1000), size=num_images, replace=False).tolist())
    images = [{"id": i, "width": 300, "height": 200} for i in image_ids]
    categories = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    annotations, results = [], []
    ann_id = int(rng.integers(0, 2))  # half of the files have an annotation with id 0
    score_grid = rng.random() < 0.5  # half of the files have many exact score ties

    def add_gt(image_id, cat_id, box, crowd=0, area=None):
        nonlocal ann_id
        area = box[2] * box[3] if area is None else area
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": box,
                            "area": float(area), "iscrowd": crowd})
        ann_id += 1

    def add_det(image_id, cat_id, box):
        score = round(float(rng.random()), 1) if score_grid else float(rng.random())
        results.append({"image_id": image_id, "category_id": cat_id, "bbox": [float(v) for v in box], "score": score})

    def random_box(scale=None):
        side = float(np.exp(rng.uniform(np.log(2), np.log(180)))) if scale is None else scale
        w, h = side * rng.uniform(0.5, 1.5), side * rng.uniform(0.5, 1.5)
        return [float(rng.uniform(0, 250)), float(rng.uniform(0, 150)), w, h]

    gt_cats = cat_ids[: num_cats - 1]  # the last category never has ground truth
    for image_id in image_ids:
        if rng.random() < 0.15:
            continue  # no ground truth here
        for _ in range(int(rng.integers(1, 7))):
            cat_id = int(rng.choice(gt_cats))
            kind = rng.random()
            if kind < 0.05:
                box = random_box(scale=float(rng.uniform(0.2, 1.5)))  # tiny
            elif kind < 0.09:
                box = [0.0, 0.0, 2e5, 1.5e5]  # area > 1e10: outside every range
            else:
                box = random_box()
            crowd = int(rng.random() < 0.15)
            area = None
            if rng.random() < 0.2:
                area = box[2] * box[3] * rng.uniform(0.3, 1.2)  # mask area differs from the box area
            elif rng.random() < 0.1:
                area = float(rng.choice([32**2, 96**2]))  # exactly on a boundary
            add_gt(image_id, cat_id, box, crowd=crowd, area=area)
            if rng.random() < 0.1:
                add_gt(image_id, cat_id, list(box))  # duplicate: exact IoU ties
    dets_cats = [c for c in cat_ids if c != cat_ids[0]]  # the first category never has detections
    for ann in list(annotations):
        if ann["category_id"] not in dets_cats:
            continue
        x, y, w, h = ann["bbox"]
        copies = int(rng.integers(0, 4)) + (4 * ann["iscrowd"])  # crowds absorb several detections
        for _ in range(copies):
            if ann["iscrowd"] and rng.random() < 0.7:
                sub_w, sub_h = w * rng.uniform(0.2, 0.6), h * rng.uniform(0.2, 0.6)
                add_det(ann["image_id"], ann["category_id"],
                        [x + rng.uniform(0, w - sub_w), y + rng.uniform(0, h - sub_h), sub_w, sub_h])
            else:
                jitter = rng.normal(0, 0.15, 4) * np.array([w, h, w, h])
                add_det(ann["image_id"], ann["category_id"], np.array([x, y, w, h]) + jitter)
        if rng.random() < 0.1:
            add_det(ann["image_id"], ann["category_id"], [x, y, w, h])  # exact copy
    for image_id in image_ids:
        for _ in range(int(rng.integers(0, 8))):
            box = random_box()
            if rng.random() < 0.05:
                box[2] = 0.0 if rng.random() < 0.5 else -box[2]  # zero width / negative size
            add_det(image_id, int(rng.choice(dets_cats)), box)
    if rng.random() < 0.5:  # one crowded (image, category) pair, beyond maxDets
        image_id, cat_id = int(rng.choice(image_ids)), int(rng.choice(dets_cats))
        for _ in range(int(rng.integers(20, 120))):
            add_det(image_id, cat_id, random_box())
    order = rng.permutation(len(results))
    return {"images": images, "annotations": annotations, "categories": categories}, [results[i] for i in order]


@pytest.mark.parametrize("seed", range(36))
def test_identical_to_cocoeval_on_random_files(seed):
    dataset, results = random_coco(seed)
    max_dets = (1, 10, 100) if seed % 3 else (1, 5, 20)  # small caps: many pairs are cut
    reference = run_cocoeval(dataset, results, max_dets)
    precision, recall = evaluate_coco(CocoGroundTruth.from_dataset(dataset), results, max_dets)
    np.testing.assert_array_equal(precision, reference.eval["precision"])
    np.testing.assert_array_equal(recall, reference.eval["recall"])
    if max_dets == (1, 10, 100):
        metrics = summarize_coco(precision, recall, list(max_dets))
        assert [metrics[key] for key in STATS_KEYS] == reference.stats.tolist()


def test_random_files_cover_the_corner_cases():
    """The generator really produces what the module docstring promises (over the seeds used above)."""
    seen = set()
    for seed in range(36):
        dataset, results = random_coco(seed)
        anns = dataset["annotations"]
        crowd_ids = {(a["image_id"], a["category_id"]) for a in anns if a["iscrowd"]}
        seen |= {"crowd"} if crowd_ids else set()
        seen |= {"crowd dets"} if any((r["image_id"], r["category_id"]) in crowd_ids for r in results) else set()
        seen |= {"huge"} if any(a["area"] > 1e10 for a in anns) else set()
        seen |= {"id 0"} if any(a["id"] == 0 for a in anns) else set()
        seen |= {"boundary"} if any(a["area"] in (32.0**2, 96.0**2) for a in anns) else set()
        scores = [r["score"] for r in results]
        seen |= {"ties"} if len(set(scores)) < len(scores) else set()
        pairs = np.unique([(r["image_id"], r["category_id"]) for r in results], axis=0, return_counts=True)[1]
        seen |= {"over cap"} if pairs.max() > 100 else set()
        seen |= {"no-gt image"} if {i["id"] for i in dataset["images"]} - {a["image_id"] for a in anns} else set()
    assert seen == {"crowd", "crowd dets", "huge", "id 0", "boundary", "ties", "over cap", "no-gt image"}


@pytest.mark.parametrize("backend", ["fast", "pycocotools"])
def test_evaluator_backends_agree(tmp_path, backend):
    dataset, results = random_coco(101, num_images=12)
    gt_file = write_json(tmp_path / "gt.json", dataset)
    reference = run_cocoeval(dataset, results)
    metrics = COCOEvaluator(gt_file, backend=backend).evaluate(results, per_class=True, pr_curves=True)
    assert [metrics[key] for key in STATS_KEYS] == reference.stats.tolist()
    other = COCOEvaluator(gt_file, backend="pycocotools" if backend == "fast" else "fast")
    assert other.evaluate(results, per_class=True, pr_curves=True) == metrics
    names = [f"c{c['id']}" for c in dataset["categories"]]
    assert metrics["per_class"][names[-1]] is None  # the category without ground truth
    assert names[-1] not in metrics["pr_curves"] and names[0] in metrics["pr_curves"]
    assert metrics["per_class"][names[0]] == 0.0  # ground truth, no detection


def test_columnar_results_and_image_subset(tmp_path):
    dataset, results = random_coco(7, num_images=10)
    gt_file = write_json(tmp_path / "gt.json", dataset)
    subset = [img["id"] for img in dataset["images"]][::2]
    columns = {
        "image_id": np.array([r["image_id"] for r in results]),
        "category_id": np.array([r["category_id"] for r in results]),
        "bbox": np.array([r["bbox"] for r in results]),
        "score": np.array([r["score"] for r in results]),
    }
    fast = COCOEvaluator(gt_file, image_ids=subset, backend="fast").evaluate(columns)
    reference = COCOEvaluator(gt_file, image_ids=subset, backend="pycocotools").evaluate(results)
    assert fast == reference


@pytest.mark.parametrize("backend", ["fast", "pycocotools"])
def test_empty_results(gt_file, backend, caplog):
    with caplog.at_level(logging.WARNING, logger="detector.evaluation"):
        metrics = COCOEvaluator(gt_file, backend=backend).evaluate([], per_class=True)
    assert [metrics[key] for key in STATS_KEYS] == [0.0] * len(STATS_KEYS)
    assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": 0.0, "fish": None}


def test_crowd_absorbs_detections_hand_case(tmp_path):
    # One real box and one crowd region of the same class.  Three detections inside the crowd (IoU with it
    # = intersection / detection area = 1) are ignored, not false positives; the real box is found.
    gt = make_coco_dict(gt_boxes=[(1, 1, [0.0, 0.0, 40.0, 40.0]), (1, 1, [100.0, 100.0, 80.0, 80.0])])
    gt["annotations"][1]["iscrowd"] = 1
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [110.0, 110.0, 10.0, 10.0], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [130.0, 130.0, 20.0, 20.0], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [150.0, 100.0, 5.0, 50.0], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 40.0, 40.0], "score": 0.6},
    ]
    for backend in ("fast", "pycocotools"):
        metrics = COCOEvaluator(write_json(tmp_path / "gt.json", gt), backend=backend).evaluate(results)
        assert metrics["AP"] == pytest.approx(1.0, abs=1e-12), backend
        assert metrics["AR1"] == 0.0 and metrics["AR10"] == 1.0, backend  # the top-1 is a crowd detection


def test_tie_order_and_cap_hand_case(tmp_path):
    # Two detections with equal scores, one hit and one miss: the one given first ranks first (stable sort),
    # so with maxDets 1 only it counts.
    gt = make_coco_dict(gt_boxes=[(1, 1, [0.0, 0.0, 40.0, 40.0])])
    hit = {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 40.0, 40.0], "score": 0.5}
    miss = {"image_id": 1, "category_id": 1, "bbox": [200.0, 200.0, 40.0, 40.0], "score": 0.5}
    gt_file = write_json(tmp_path / "gt.json", gt)
    for backend in ("fast", "pycocotools"):
        evaluator = COCOEvaluator(gt_file, backend=backend)
        assert evaluator.evaluate([hit, miss])["AR1"] == 1.0
        assert evaluator.evaluate([miss, hit])["AR1"] == 0.0
        assert evaluator.evaluate([miss, hit])["AP"] == pytest.approx(0.5, abs=1e-12)


def test_bad_ground_truth_is_named():
    dataset = make_coco_dict()
    dataset["annotations"][1]["id"] = dataset["annotations"][0]["id"]
    with pytest.raises(ValueError, match=r"annotation id 1 appears twice"):
        CocoGroundTruth.from_dataset(dataset)
    dataset = make_coco_dict()
    del dataset["annotations"][2]["area"]
    with pytest.raises(ValueError, match=r"annotation id 3 \(image id 2\) has no 'area'"):
        CocoGroundTruth.from_dataset(dataset)


def test_unknown_backend(gt_file):
    with pytest.raises(ValueError, match="backend"):
        COCOEvaluator(gt_file, backend="detectron")
    assert COCOEvaluator(gt_file, backend="fast").evaluate(perfect_results())["AP"] == pytest.approx(1, abs=1e-12)


@pytest.mark.parametrize("bbox", [[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0]])
def test_bad_bbox_is_a_clear_error(gt_file, bbox):
    results = [{"image_id": 1, "category_id": 1, "bbox": bbox, "score": 0.5}] * 4
    with pytest.raises(ValueError, match="4 numbers"):
        COCOEvaluator(gt_file, backend="fast").evaluate(results)
