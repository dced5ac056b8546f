"""benchmarks/coco_eval.py at toy size: the synthetic data looks like COCO val, and the fast backend and
pycocotools give the same 12 metrics on it."""

from __future__ import annotations

import numpy as np

from benchmarks import coco_eval


def test_synthetic_data_is_coco_like():
    gt = coco_eval.make_ground_truth(200, seed=1)
    area = np.array([a["area"] for a in gt["annotations"]])
    assert 5 < len(area) / 200 < 10  # ~7 boxes per image
    shares = [(area < 32**2).mean(), ((area >= 32**2) & (area < 96**2)).mean(), (area >= 96**2).mean()]
    assert all(0.15 < share < 0.6 for share in shares), shares
    assert len({a["category_id"] for a in gt["annotations"]}) > 40
    results = coco_eval.make_results(gt, dets_per_image=30, seed=1)
    assert (np.bincount(results["image_id"])[1:] == 30).all()
    assert len(np.unique(results["score"])) < len(results["score"])  # score ties occur


def test_toy_run_matches_pycocotools(tmp_path):
    reports = coco_eval.run(images=20, dets_per_image=30, backends=("pycocotools", "fast"), work_dir=tmp_path,
                            in_process=True)
    assert reports["fast"]["detections"] == reports["pycocotools"]["detections"] == 600
    assert reports["fast"]["max_diff"] == 0.0
    assert 0.0 < reports["fast"]["stats"][0] < 1.0
    table = coco_eval.format_table(reports)
    assert table.count("\n") == 3 and "| fast | 600 |" in table


def test_main_cli_skips_pycocotools(tmp_path, capsys):
    reports = coco_eval.main(["--images", "20", "--dets-per-image", "10", "--skip-pycocotools",
                              "--skip-faster-coco-eval", "--in-process", "--work-dir", str(tmp_path)])
    assert list(reports) == ["fast"] and "max_diff" not in reports["fast"]
    assert "20 images x 10 detections" in capsys.readouterr().out
