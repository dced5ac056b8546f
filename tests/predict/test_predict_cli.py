"""tools/predict.py on a folder with a corrupt file: predictions.json, drawn images, skipping or --strict, globs,
and an interrupted run that keeps what it wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector import Detector
from detector.predict import image_files

from .conftest import run_tool
from .test_checkpoints import load_tool


@pytest.fixture(scope="module")
def folder(trained, tmp_path_factory) -> Path:
    """in/a/x.png, in/a/sub/y.jpg, in/b/bad.jpg (not an image), in/b/x.png (the name of a/x.png), in/notes.txt."""
    root = tmp_path_factory.mktemp("cli") / "in"
    val = sorted((trained.root / "syn" / "val").glob("*.png"))
    (root / "a" / "sub").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(val[0], root / "a" / "x.png")
    Image.open(val[1]).convert("RGB").save(root / "a" / "sub" / "y.jpg", quality=95)
    (root / "b" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    shutil.copy(val[2], root / "b" / "x.png")
    (root / "notes.txt").write_text("not an image")
    return root


GOOD = ["a/sub/y.jpg", "a/x.png", "b/x.png"]  # the folder's images in search order, bad.jpg between them


def test_folder_with_a_corrupt_file(trained, folder, tmp_path):
    out = tmp_path / "out"
    proc = run_tool("tools/predict.py", trained.checkpoint, folder, "--out-dir", out, "--num-workers", "2",
                    "--batch-size", "2", "--draw-thr", "0.05", "--no-progress")
    assert "b/bad.jpg" in proc.stderr and "skipped" in proc.stderr
    assert "3 images (1 unreadable, skipped)" in proc.stdout and "images/s" in proc.stdout
    entries = json.loads((out / "predictions.json").read_text())
    assert [entry["file_name"] for entry in entries] == [str(folder / name) for name in GOOD]
    det = Detector.from_checkpoint(trained.checkpoint, device="cpu")
    expected = det.predict([folder / name for name in GOOD])
    for entry, result in zip(entries, expected):
        assert (entry["height"], entry["width"]) == result.image_size
        assert len(entry["detections"]) == len(result) > 0
        first = entry["detections"][0]
        assert set(first) == {"box", "score", "category_id", "class_name"}
        np.testing.assert_allclose([d["box"] for d in entry["detections"]], result.boxes.numpy(), atol=2e-3)
        np.testing.assert_allclose([d["score"] for d in entry["detections"]], result.scores.numpy(), atol=2e-5)
        assert [d["class_name"] for d in entry["detections"]] == result.class_names
        assert [d["category_id"] for d in entry["detections"]] == result.category_ids
    for name in GOOD:  # one drawing per image, subfolders kept: a/x.png and b/x.png do not collide
        drawn = Image.open(out / name)
        assert drawn.size == Image.open(folder / name).size
    assert not (out / "b" / "bad.jpg").exists() and not (out / "notes.txt").exists()
    drawn = np.asarray(Image.open(out / "a" / "x.png"))
    assert not np.array_equal(drawn, np.asarray(Image.open(folder / "a" / "x.png").convert("RGB")))  # boxes drawn


def test_strict_stops_at_the_corrupt_file_keeping_what_came_before(trained, folder, tmp_path):
    out = tmp_path / "out"
    proc = run_tool("tools/predict.py", trained.checkpoint, folder, "--out-dir", out, "--strict", "--no-draw",
                    "--num-workers", "0", "--no-progress", check=False)
    assert proc.returncode == 1
    assert "error: cannot decode image" in proc.stderr and "b/bad.jpg" in proc.stderr
    entries = json.loads((out / "predictions.json").read_text())
    assert [entry["file_name"] for entry in entries] == [str(folder / name) for name in GOOD[:2]]
    assert sorted(path.name for path in out.iterdir()) == ["predictions.json"]  # --no-draw


def test_globs_files_and_score_threshold(trained, folder, tmp_path):
    out = tmp_path / "out"
    run_tool("tools/predict.py", trained.checkpoint, str(folder / "**" / "*.png"), folder / "a" / "x.png",
             folder / "a" / "sub" / "y.jpg", "--out-dir", out, "--score-thr", "0.2", "--no-draw", "--no-progress")
    entries = json.loads((out / "predictions.json").read_text())
    assert [entry["file_name"] for entry in entries] == [str(folder / name) for name in ("a/x.png", "b/x.png",
                                                                                         "a/sub/y.jpg")]
    assert all(d["score"] >= 0.2 for entry in entries for d in entry["detections"])
    proc = run_tool("tools/predict.py", trained.checkpoint, str(folder / "*.webp"), "--out-dir", out, check=False)
    assert proc.returncode == 1 and "no file matches it" in proc.stderr


def test_an_interrupted_run_keeps_a_complete_predictions_file(trained, folder, tmp_path, monkeypatch):
    """Ctrl-C (here raised while drawing the second image) ends the run with exit code 130; predictions.json is
    complete JSON with the images predicted before, and the previous file is replaced."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("[]")
    drawn = []

    def interrupting_draw(image, detections, path, score_thr, class_names):
        drawn.append(path)
        if len(drawn) == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(image_files, "save_drawing", interrupting_draw)
    code = load_tool("predict").main([str(trained.checkpoint), str(folder), "--out-dir", str(out), "--num-workers",
                                      "0", "--no-progress"])
    assert code == 130
    entries = json.loads((out / "predictions.json").read_text())
    assert [entry["file_name"] for entry in entries] == [str(folder / name) for name in GOOD[:2]]
    assert not list(out.glob(".predictions.json.*"))  # no temporary file left
