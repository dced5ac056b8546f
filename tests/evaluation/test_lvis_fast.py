"""The vectorised LVIS evaluator against lvis-api itself: bit-identical on many random files.

The random files exercise every rule lvis-api has: negative and not-exhaustive categories (and a
not-exhaustive category with no ground truth), crowded images over the per-image cap, score ties, exact
IoU ties between different ground truths, duplicated ground truths, ``ignore`` flags, an annotation id 0,
zero-area ground truths, zero-width and negative-size detections, areas exactly on a range boundary,
categories without ground truth or detections, unknown categories, all three frequency groups.
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest

from detector.evaluation.box_matching import pair_iou
from detector.evaluation.lvis_compat import import_lvis
from detector.evaluation.lvis_fast import (
    LvisGroundTruth,
    as_columnar,
    cap_detections_per_image,
    evaluate_columnar,
    summarize,
)

# lvis-api's LVISResults calls the deprecated Logger.warn when given a list.
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR", "ARs", "ARm", "ARl")


def random_lvis(seed: int, num_images: int = 8, num_cats: int = 8) -> tuple[dict, list[dict]]:
    """A random LVIS ground truth and detections full of lvis-api's corner cases."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 40), size=num_cats, replace=False).tolist())
    categories = [{"id": c, "name": f"c{c}", "frequency": "rcf"[i % 3]} for i, c in enumerate(cat_ids)]
    images, annotations, results = [], [], []
    ann_id = int(rng.integers(0, 2))  # half of the files have an annotation with id 0

    def add_gt(image_id: int, cat_id: int, bbox: list[float], area: float, **extra) -> None:
        nonlocal ann_id
        annotations.append(
            {"id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": bbox, "area": area, **extra}
        )
        ann_id += 1

    def add_det(image_id: int, cat_id: int, bbox: list[float], score: float) -> None:
        results.append({"image_id": image_id, "category_id": cat_id, "bbox": bbox, "score": score})

    for image_id in rng.permutation(np.arange(1, num_images + 1)).tolist():
        width, height = 200.0, 160.0
        positive = rng.choice(cat_ids, size=int(rng.integers(0, 4)), replace=False).tolist()
        others = [c for c in cat_ids if c not in positive]
        negative = rng.choice(others, size=min(len(others), int(rng.integers(0, 4))), replace=False).tolist()
        not_exhaustive = [c for c in positive if rng.random() < 0.3]
        if rng.random() < 0.2:
            not_exhaustive.append(int(rng.choice(cat_ids)))
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "neg_category_ids": negative,
                "not_exhaustive_category_ids": not_exhaustive,
            }
        )
        boxes = []
        for cat_id in positive:
            for _ in range(int(rng.integers(1, 12 if rng.random() < 0.3 else 4))):
                size = float(np.exp(rng.uniform(np.log(4), np.log(150))))
                w, h = round(size * rng.uniform(0.5, 1.5), 1), round(size * rng.uniform(0.5, 1.5), 1)
                if rng.random() < 0.05:
                    w, h = 32.0, 32.0  # area exactly on the small/medium boundary
                x, y = round(rng.uniform(0, width - 1), 1), round(rng.uniform(0, height - 1), 1)
                area = w * h if rng.random() > 0.03 else 0.0  # zero area: not evaluated at all
                extra = {"ignore": 1} if rng.random() < 0.05 else {}
                add_gt(image_id, cat_id, [x, y, w, h], area, **extra)
                boxes.append((cat_id, [x, y, w, h]))
                if rng.random() < 0.1:
                    add_gt(image_id, cat_id, [x, y, w, h], area, **extra)  # duplicate
                if rng.random() < 0.15:  # twins with equal IoU to [x, y, w, h]: the tie rule decides
                    d = round(w * 0.2, 1)
                    for bbox in ([x, y, w + d, h], [x, y, w, h + d * h / w]):
                        add_gt(image_id, cat_id, bbox, bbox[2] * bbox[3])
                    add_det(image_id, cat_id, [x, y, w, h], 0.9)
                    add_det(image_id, cat_id, [x, y, w + d, h], 0.3)
        for cat_id, (x, y, w, h) in boxes:
            for _ in range(int(rng.integers(0, 4))):
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                det_cat = cat_id if rng.random() < 0.85 else int(rng.choice([*cat_ids, 999]))
                bbox = [x + jitter[0], y + jitter[1], max(0.0, w + jitter[2]), h + jitter[3]]
                add_det(image_id, det_cat, [round(float(v), 2) for v in bbox], float(np.round(rng.uniform(), 2)))
            if rng.random() < 0.2:
                add_det(image_id, cat_id, [x, y, w, h], 0.5)
            if rng.random() < 0.1:
                add_det(image_id, cat_id, [x, y, 0.0, h], 0.7)  # zero width: dropped
                add_det(image_id, cat_id, [x + w, y + h, -w, -h], 0.6)  # negative size, positive area
        for _ in range(int(rng.integers(0, 80 if rng.random() < 0.25 else 40))):
            w, h = (round(float(v), 2) for v in rng.uniform(1, 120, 2))
            x, y = round(float(rng.uniform(0, width)), 2), round(float(rng.uniform(0, height)), 2)
            add_det(image_id, int(rng.choice(cat_ids)), [x, y, w, h], float(np.round(rng.uniform(), 2)))
    rng.shuffle(annotations)
    results = [results[i] for i in rng.permutation(len(results))]
    return {"images": images, "annotations": annotations, "categories": categories}, results


@pytest.fixture(scope="module")
def lvis():
    module = import_lvis()
    logging.getLogger("lvis").setLevel(logging.ERROR)  # lvis' "Assuming user provided..." warnings
    yield module
    logging.getLogger("lvis").setLevel(logging.NOTSET)


def _lvis_api(lvis, gt_path, results: list[dict], max_dets: int):
    """lvis-api run directly: the reference."""
    lvis_gt = lvis.LVIS(str(gt_path))
    lvis_dt = lvis.LVISResults(lvis_gt, copy.deepcopy(results), max_dets=max_dets)
    lvis_eval = lvis.LVISEval(lvis_gt, lvis_dt, iou_type="bbox")
    lvis_eval.run()
    return lvis_eval


def _fast(gt_dict: dict, results: list[dict], max_dets: int):
    gt = LvisGroundTruth.from_dataset(gt_dict)
    precision, recall = evaluate_columnar(gt, as_columnar(results), max_dets)
    return precision, recall, summarize(gt, precision, recall)


@pytest.mark.parametrize("seed", range(30))
def test_fast_equals_lvis_api_on_random_files(seed, tmp_path, lvis):
    gt_dict, results = random_lvis(seed, num_images=8 + seed % 5 * 4)
    max_dets = (300, 5, 12)[seed % 3]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt_dict))
    reference = _lvis_api(lvis, gt_path, results, max_dets)
    precision, recall, metrics = _fast(gt_dict, results, max_dets)

    assert np.array_equal(precision, reference.eval["precision"])
    assert np.array_equal(recall, reference.eval["recall"])
    api = {key.split("@")[0]: float(value) for key, value in reference.results.items()}
    assert set(api) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(api[key], abs=1e-9), key
    assert 0 < metrics["AP"] < 1  # a real, non-degenerate comparison


def test_more_than_300_detections_per_image(tmp_path, lvis):
    """The default cap: 420 detections on one image, score ties across the cut, several categories."""
    gt_dict, _ = random_lvis(7, num_images=3)
    rng = np.random.default_rng(1)
    gts = [a for a in gt_dict["annotations"] if a["area"] > 0]
    image_id = gts[0]["image_id"]
    cats = [c["id"] for c in gt_dict["categories"]]
    results = []
    for index in range(420):
        source = gts[index % len(gts)]
        x, y, w, h = source["bbox"]
        bbox = [x + float(rng.normal(0, 2)), y + float(rng.normal(0, 2)), w, h]
        cat = source["category_id"] if index % 3 else int(rng.choice(cats))
        score = round(float(rng.uniform()), 1)  # ties across the cut
        results.append({"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score})
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt_dict))
    reference = _lvis_api(lvis, gt_path, results, 300)
    precision, recall, _ = _fast(gt_dict, results, 300)
    assert np.array_equal(precision, reference.eval["precision"])
    assert np.array_equal(recall, reference.eval["recall"])


def test_cap_matches_lvis_results_limit(lvis):
    rng = np.random.default_rng(0)
    image_id = rng.integers(1, 6, size=500)
    score = np.round(rng.uniform(size=500), 1)  # many ties
    anns = [{"image_id": int(i), "score": float(s), "index": k} for k, (i, s) in enumerate(zip(image_id, score))]
    kept = lvis.LVISResults.limit_dets_per_image(None, anns, 60)
    assert sorted(a["index"] for a in kept) == cap_detections_per_image(image_id, score, 60).tolist()
    assert cap_detections_per_image(image_id, score, 500) is None


def test_pair_iou_is_bitwise_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    gt = np.round(rng.uniform(0, 100, (40, 4)), 2)
    det = np.round(rng.uniform(0, 100, (60, 4)), 2)
    det[:20] = gt[:20] + np.round(rng.normal(0, 1, (20, 4)), 2)
    reference = mask_utils.iou(det.tolist(), gt.tolist(), [0] * len(gt))  # (60, 40)
    d, g = np.meshgrid(np.arange(len(det)), np.arange(len(gt)), indexing="ij")
    ours = pair_iou(det[d.ravel()], gt[g.ravel()]).reshape(reference.shape)
    assert np.array_equal(ours, reference)


def test_no_detections_give_zero_where_there_is_ground_truth():
    gt_dict, _ = random_lvis(3)
    precision, recall, metrics = _fast(gt_dict, [], 300)
    has_gt = precision > -1
    assert has_gt.any() and not precision[has_gt].any()
    assert metrics["AP"] == 0.0 and metrics["AR"] == 0.0
