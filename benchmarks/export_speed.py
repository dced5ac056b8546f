"""Inference time of the exported ONNX model (onnxruntime, CPU) against the eager PyTorch model, both including
box decoding, per-image clipping and NMS, on the same normalised padded batch.

    python benchmarks/export_speed.py --cpu-clock                  # R50 RetinaNet at 512 px, the quick-start model
    python benchmarks/export_speed.py --cpu-clock --repeats 3 --models quickstart

Models have random weights, with the classification biases spread (N(-2.5, 1)) so that every level's top-k is
full and post-processing does its worst-case work (a fresh RetinaNet's prior 0.01 would leave NMS nothing to do).
The eager model runs ``model(images, image_sizes=...)`` under ``torch.inference_mode()``; onnxruntime runs the
graph ``Detector.export`` / ``tools/export.py`` writes (opset 17, static shape), with graph optimisations on.
With ``--cpu-clock`` both run on one thread of the calling process (torch ``set_num_threads(1)``, onnxruntime
``intra_op_num_threads=1``, sequential execution) and are timed with the thread's CPU seconds (see
benchmarks/README.md: ratios hold up on a shared machine). The same detections are checked before timing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/export_speed.py`: the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, clock_name, median, print_table, time_rotating, use_cpu_clock  # noqa: E402

# name -> (config, overrides, input size)
MODELS = {
    "retinanet_r50": ("configs/retinanet/retinanet_r50_fpn_1x_coco.yaml", ["model.backbone.weights=null"], 512),
    "quickstart": ("configs/quickstart.yaml", [], 160),
}


def build(name: str) -> tuple[torch.nn.Module, int]:
    from detector.config import load_config
    from detector.models import build_model

    path, overrides, size = MODELS[name]
    torch.manual_seed(0)
    model = build_model(load_config(str(ROOT / path), overrides)).eval()
    with torch.no_grad():
        model.head.cls_logits.bias.normal_(-2.5, 1.0)
    return model, size


def session_for(path: Path, one_thread: bool):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if one_thread:
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_model(name: str, repeats: int, one_thread: bool, work_dir: Path) -> list[object]:
    from detector.export import export_detector

    model, size = build(name)
    path = export_detector(model, work_dir / f"{name}.onnx", "onnx", (size, size), {"benchmark": name})
    session = session_for(path, one_thread)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, size, size, generator=generator)  # (1, 3, S, S), like a normalised image
    sizes = torch.tensor([[size, size]])
    feeds = {"images": images.numpy(), "image_sizes": sizes.numpy()}

    def eager():
        with torch.inference_mode():
            return model(images, image_sizes=sizes)

    expected = eager()[0]
    boxes, scores, _, count = session.run(None, feeds)
    assert int(count[0]) == len(expected["scores"]), "ONNX and eager disagree on the number of detections"
    torch.testing.assert_close(torch.from_numpy(scores[0, :int(count[0])]), expected["scores"], atol=1e-4, rtol=0)
    times = time_rotating({"eager": eager, "onnx": lambda: session.run(None, feeds)}, repeats)
    eager_s, onnx_s = median(times["eager"]), median(times["onnx"])
    return [name, f"{size}x{size}", len(expected["scores"]), f"{eager_s * 1e3:.0f}", f"{onnx_s * 1e3:.0f}",
            f"{eager_s / onnx_s:.2f}x"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up (median reported)")
    parser.add_argument("--cpu-clock", action="store_true", help="one thread, timed by the thread's CPU seconds")
    args = parser.parse_args(argv)
    use_cpu_clock(args.cpu_clock)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_model(name, args.repeats, args.cpu_clock, Path(tmp)) for name in args.models]
    print(f"Inference, batch 1, decoding + NMS included ({clock_name()}; median of {args.repeats})\n")
    print_table(["model", "input", "detections", "eager ms", "onnxruntime ms", "eager / onnx"], rows)


if __name__ == "__main__":
    main()
