"""tools/publish_checkpoint.py: weights + metadata only, the same detections, a smaller file, EMA weights."""

from __future__ import annotations

import hashlib

import pytest
import torch

from detector import Detector
from detector.runtime.checkpoint import load_checkpoint

from .test_checkpoints import load_tool


@pytest.fixture(scope="module")
def images(trained):
    return sorted((trained.root / "syn" / "val").glob("*.png"))[:4]


def test_publish_round_trip(trained, images, tmp_path, capsys):
    out = tmp_path / "published.pt"
    assert load_tool("publish_checkpoint").main([str(trained.checkpoint), str(out)]) == 0
    printed = capsys.readouterr().out
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256: {sha}" in printed and "model weights" in printed
    state = load_checkpoint(out)
    assert set(state) == {"model", "meta"}
    assert out.stat().st_size < 0.6 * trained.checkpoint.stat().st_size  # no optimizer momentum
    assert state["meta"] == load_checkpoint(trained.checkpoint)["meta"]
    original = Detector.from_checkpoint(trained.checkpoint, device="cpu").predict(images)
    published = Detector.from_checkpoint(out, device="cpu").predict(images)
    for a, b in zip(original, published):
        assert len(a) > 0 and torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
        assert a.class_names == b.class_names


def test_ema_weights_hash_in_name_and_old_checkpoints(trained, images, tmp_path, capsys):
    state = load_checkpoint(trained.checkpoint)
    ema = {key: value.clone() for key, value in state["model"].items()}
    ema["head.cls_logits.bias"] += 1.0  # every score higher: EMA weights differ from the trained ones
    with_ema = tmp_path / "with_ema.pt"
    torch.save({**state, "ema": {"model": ema, "updates": 24}}, with_ema)
    assert load_tool("publish_checkpoint").main([str(with_ema), str(tmp_path / "m.pt"), "--hash-in-name"]) == 0
    printed = capsys.readouterr().out
    sha = printed.split("sha256: ")[1].strip()
    path = tmp_path / f"m-{sha[:8]}.pt"
    assert path.is_file() and not (tmp_path / "m.pt").exists() and "ema weights" in printed
    assert torch.equal(load_checkpoint(path)["model"]["head.cls_logits.bias"], ema["head.cls_logits.bias"])

    old = tmp_path / "old.pt"
    torch.save({key: value for key, value in state.items() if key != "meta"}, old)
    assert load_tool("publish_checkpoint").main([str(old), str(tmp_path / "x.pt")]) == 1
    assert "carries no config" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert load_tool("publish_checkpoint").main([str(old), str(tmp_path / "y.pt"), "--config",
                                                 str(trained.config)]) == 0
    assert load_checkpoint(tmp_path / "y.pt")["meta"]["class_names"] == state["meta"]["class_names"]
