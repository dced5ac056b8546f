"""Every benchmark once at toy size through benchmarks/run_all.py (tiny images, ResNet-18 where the R50 is not
the point, one repeat): the driver runs each stage, and the invariants the benchmarks report hold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not installed: the repo root
from benchmarks import run_all  # noqa: E402
from benchmarks.assign_loss import run as assign_loss_run  # noqa: E402
from benchmarks.common import make_inputs, time_rotating  # noqa: E402
from benchmarks.data_loading import run as data_loading_run  # noqa: E402
from benchmarks.predict import run_memory  # noqa: E402
from benchmarks.speed_features import run_model  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning threads per process cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_run_all_toy(tmp_path, capsys):
    toy = {
        "train_step": dict(size=96, batch=1, boxes=3, repeats=1, warmup=0, depth=18),
        "profile": dict(size=64, batch=1, boxes=3, repeats=1, warmup=0, depth=18),
        "assign_loss": dict(size=64, batch=1, box_counts=(3,), step_boxes=3, repeats=1, step_repeats=1, depth=18),
        "coco": dict(images=10, dets_per_image=5, in_process=True, work_dir=tmp_path / "coco"),
        "lvis": dict(images=10, api_max_images=10, work_dir=tmp_path / "lvis"),
        "data": dict(images=4, size=64, workers=(0,), max_batches=1, step_images_per_s=0.5,
                     work_dir=str(tmp_path / "data")),
        "features": dict(models=((18, 64),), repeats=1),
        "predict": dict(num_images=2, low=64, high=96, min_size=64, max_size=96, batch=2, repeats=1, warmup=0),
    }
    rows = run_all.run(quick=True, device="cpu", toy=toy)
    out = capsys.readouterr().out
    stages = [row[0] for row in rows]
    assert not any(row[1].startswith("failed") for row in rows), rows
    assert any(s.startswith("RetinaNet R50 train step") for s in stages)
    assert any(s.startswith("RetinaNet R50 inference") for s in stages)
    assert any(s.startswith("assign + loss share, retinanet") for s in stages)
    assert any(s.startswith("assign + loss share, gfl") for s in stages)
    assert any(s.startswith("LVIS eval") for s in stages)
    assert any(s.startswith("training loader") for s in stages)
    assert any(s.startswith("speed feature fused_optimizer") for s in stages)
    assert any(s.startswith("Detector.predict") for s in stages)
    if importlib.util.find_spec("benchmarks.coco_eval") is not None:
        assert any(s.startswith("COCO eval") for s in stages)
    lvis_row = next(r for r in rows if r[0].startswith("LVIS eval"))
    assert lvis_row[5] in ("yes", "NO")  # measured both
    for stage in ("backbone", "backward", "optimizer"):  # the profiler table lists every stage
        assert f"| {stage} |" in out
    assert "| stage | ours | peer | ratio | target | met? |" in out


def test_assign_loss_shares_are_fractions_of_the_step():
    res = assign_loss_run(detectors=("retinanet",), box_counts=(1, 8), size=64, batch=2, step_boxes=8, repeats=1,
                          step_repeats=1, depth=18, verbose=False)
    rows = res["retinanet"]["rows"]
    assert set(rows) == {1, 8}
    for r in rows.values():
        assert 0 < r["assign"] < r["step"] and 0 < r["loss"] < r["step"]
        assert r["share"] == pytest.approx((r["assign"] + r["loss"]) / r["step"])
    assert res["retinanet"]["anchors"] == 9 * (8 * 8 + 4 * 4 + 2 * 2 + 1 + 1)  # 64 px, P3-P7


def test_speed_features_baseline_and_fused_sgd_agree():
    res = run_model(depth=18, size=64, batch=1, boxes=2, repeats=1, features=("baseline", "fused_optimizer"))
    assert res["baseline"]["max_param_diff"] == 0.0
    assert res["fused_optimizer"]["max_param_diff"] < 1e-5  # same update, another kernel


def test_data_loading_decoders_give_the_same_pixels(tmp_path):
    res = data_loading_run(images=4, size=48, workers=(0,), max_batches=1, step_images_per_s=1e-6,
                           work_dir=str(tmp_path), verbose=False)
    assert res["pixels_differing"] == 0 and res["max_pixel_diff"] == 0
    assert set(res["rates"]) == {"torchvision.io/0", "PIL/0"} and res["keeps_up"] is True


def test_time_rotating_rotates_the_order():
    calls = []
    times = time_rotating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert [len(t) for t in times.values()] == [2, 2]
    images, targets = make_inputs(2, 32, 3, 5)
    assert images.shape == (2, 3, 32, 32) and all(t["boxes"].shape == (3, 4) for t in targets)
    assert all(bool((t["boxes"][:, 2:] > t["boxes"][:, :2]).all()) for t in targets)


def test_predict_memory_samples_every_few_images_of_the_stream():
    """6 image files streamed at score threshold 0: memory sampled before images 0, 2, 4 and after the last, and
    every image written with the quick start's 100 detections (its model.test.max_dets)."""
    res = run_memory(num_images=6, low=32, high=48, batch=4, workers=0, every=2, verbose=False)
    assert [count for count, _ in res["samples"]] == [0, 2, 4, 6]
    assert all(mb > 0 for _, mb in res["samples"]) and res["peak"] >= max(mb for _, mb in res["samples"])
    assert (res["summary"].num_images, res["summary"].num_failed, res["summary"].num_detections) == (6, 0, 600)

def test_export_speed_runs_the_quickstart_model_both_ways(tmp_path):
    pytest.importorskip("onnxruntime")
    from benchmarks.export_speed import run_model as export_speed_run

    row = export_speed_run("quickstart", repeats=1, one_thread=True, work_dir=tmp_path)
    name, size, detections, eager_ms, onnx_ms, ratio = row
    assert (name, size, detections) == ("quickstart", "160x160", 100)  # every level's top-k full: max_dets kept
    assert float(eager_ms) > 0 and float(onnx_ms) > 0 and ratio.endswith("x")
