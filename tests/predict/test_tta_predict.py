"""Test-time augmentation through Detector.predict, tools/predict.py --tta and tools/eval.py (evaluation.tta) on the
tiny trained quick start: off and one plain view give today's detections bit for bit, a flip TTA of a mirrored
image is the mirror of the flip TTA of the image, bad tta arguments are named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detector import Detector
from detector.config import ConfigError

from .conftest import run_tool


@pytest.fixture(scope="module")
def scene(trained) -> np.ndarray:
    """A 48-row RGB crop of a synthetic val image (its longer side at most the test size: no resize)."""
    files = sorted((trained.root / "syn" / "val").glob("*.png"))
    return np.asarray(Image.open(files[1]).convert("RGB"))[8:56].copy()  # (48, 64, 3)


def assert_identical(expected, got):
    assert len(expected) > 0
    for name in ("boxes", "scores", "labels"):
        assert torch.equal(getattr(expected, name), getattr(got, name)), name


def by_score(detections):
    order = detections.scores.argsort(descending=True)
    return detections.boxes[order], detections.scores[order], detections.labels[order]


def test_tta_off_and_one_plain_view_give_todays_detections_bit_for_bit(det, scene):
    today = det.predict(scene)[0]
    assert det.resolve_tta(None) is None  # the quick start's config has evaluation.tta: null
    assert_identical(today, det.predict(scene, tta=False)[0])
    assert_identical(today, det.predict(scene, tta={"flips": [False]})[0])  # the test size, not mirrored


def test_flip_tta_of_a_mirrored_image_is_the_mirror_of_its_flip_tta(det, scene):
    width = scene.shape[1]
    augmented = det.predict(scene, tta=True)[0]
    mirrored = det.predict(scene[:, ::-1].copy(), tta=True)[0]
    plain = det.predict(scene)[0]
    assert len(augmented) == len(plain) and not torch.equal(augmented.boxes, plain.boxes)  # the flip adds boxes
    boxes, scores, labels = by_score(augmented)
    mirror_boxes, mirror_scores, mirror_labels = by_score(mirrored)
    # both merge the same two views (the image and its mirror) with their roles swapped
    assert torch.equal(labels, mirror_labels)
    torch.testing.assert_close(mirror_scores, scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(mirror_boxes, torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                                          boxes[:, 3]], 1), atol=1e-3, rtol=0)


def test_config_tta_and_scales(trained, det, scene):
    from_config = Detector.from_checkpoint(trained.checkpoint, device="cpu", overrides=["evaluation.tta={}"])
    assert_identical(det.predict(scene, tta=True)[0], from_config.predict(scene)[0])
    multi = det.predict(scene, tta={"scales": [32, 48, 64]})[0]
    assert len(multi) > 0
    assert (multi.boxes[:, 2] <= scene.shape[1]).all() and (multi.boxes[:, 3] <= scene.shape[0]).all()


@pytest.mark.parametrize("tta, message", [
    ({"scales": [0]}, "config key 'tta.scales' (set in Detector.predict(tta=...))"),
    ({"flips": ["yes"]}, "'tta.flips[0]'"),
    ({"scale": [64]}, "did you mean 'tta.scales'"),
    ([64], "tta (set in Detector.predict(tta=...)) must be a mapping, got [64]"),
])
def test_bad_tta_arguments_are_named(det, scene, tta, message):
    with pytest.raises(ConfigError) as err:
        det.predict(scene, tta=tta)
    assert message in str(err.value)


def test_predict_cli_tta(trained, det, tmp_path):
    image = sorted((trained.root / "syn" / "val").glob("*.png"))[0]
    run_tool("tools/predict.py", trained.checkpoint, image, "--out-dir", tmp_path, "--tta", "--no-draw",
             "--no-progress", "--num-workers", "0")
    (entry,) = json.loads((tmp_path / "predictions.json").read_text())
    expected = det.predict(image, tta=True)[0]
    assert len(entry["detections"]) == len(expected)
    torch.testing.assert_close(torch.tensor([d["box"] for d in entry["detections"]]), expected.boxes,
                               atol=1e-3, rtol=0)


def test_eval_with_tta(trained, tmp_path):
    def evaluate(name: str, *opts: str) -> tuple[dict, list]:
        metrics, results = tmp_path / f"metrics_{name}.json", tmp_path / f"results_{name}.json"
        run_tool("tools/eval.py", trained.checkpoint, "--metrics-out", metrics, "--out", results, "--no-progress",
                 "--opts", *opts)
        return json.loads(metrics.read_text()), json.loads(results.read_text())

    plain = evaluate("plain", "evaluation.tta=null")
    one_view = evaluate("one_view", "evaluation.tta={flips: [false]}")
    assert one_view == plain  # the test size, not mirrored: the evaluation without TTA exactly
    metrics, results = evaluate("tta", "evaluation.tta={scales: [48, 64], flips: [false, true]}")
    assert 0 <= metrics["AP"] <= 1 and len(results) == len(plain[1]) and results != plain[1]  # max_dets each
