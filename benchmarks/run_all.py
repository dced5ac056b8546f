"""Every benchmark in one run, then one table: stage, ours, peer, ratio, target, met?

Stages: training step and inference (with post-processing) of our RetinaNet R50-FPN against torchvision's
(``train_step.py``); where a step's time goes (``profile_step.py``); assignment + loss share of the step
(``assign_loss.py``); COCO evaluation against pycocotools and faster-coco-eval when installed
(``coco_eval.py``); LVIS evaluation against lvis-api (``lvis_eval.py``); the training loader against the step
it feeds (``data_loading.py``); the optional speed features (``speed_features.py``); ``Detector.predict`` on
images of mixed sizes against torchvision's RetinaNet called as its users call it (``predict.py``, CPU). Each
stage prints its own table as it finishes.

    python benchmarks/run_all.py --quick --cpu-clock     # < 10 minutes on a 2-core CPU, same comparisons
    python benchmarks/run_all.py --device cuda           # full sizes; CUDA times are synchronised
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import clock_name, default_device, print_table, use_cpu_clock  # noqa: E402

# Sizes per mode: (full, quick)
SIZES = {
    "train_step": (dict(size=512, repeats=5), dict(size=320, repeats=2)),
    "profile": (dict(size=512, repeats=3), dict(size=320, repeats=1)),
    "assign_loss": (dict(size=640, repeats=5, step_repeats=3), dict(size=384, repeats=3, step_repeats=1)),
    "coco": (dict(images=5000), dict(images=500)),
    "lvis": (dict(images=20_000, api_max_images=2_000), dict(images=1_000, api_max_images=1_000)),
    "data": (dict(images=200, size=640), dict(images=60, size=384)),  # the sizes of assign_loss's step
    "features": (dict(models=((18, 256), (50, 512)), repeats=3), dict(models=((18, 128), (50, 256)), repeats=1)),
    "predict": (dict(num_images=16, min_size=320, max_size=533, repeats=3), dict(num_images=8, repeats=1)),
}


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}{unit}"
    return f"{value}{unit}"


def _row(stage, ours, peer, ratio, target, met) -> list:
    return [stage, ours, peer, ratio, target, {True: "yes", False: "NO", None: "-"}[met]]


def stage_train_step(q: int, device: str, rows: list, toy: dict) -> None:
    from benchmarks.train_step import run
    kw = {**SIZES["train_step"][q], **toy.get("train_step", {})}
    res = run(detectors=["retinanet"], device=device, **kw)
    for mode in ("train step", "inference"):
        ours, peer = res[mode]["focaldet retinanet"], res[mode]["torchvision retinanet"]
        rows.append(_row(f"RetinaNet R50 {mode} ({kw['size']} px)", f"{ours:.3f} s", f"{peer:.3f} s (torchvision)",
                         f"{ours / peer:.3f}", "<= 0.85", ours / peer <= 0.85))


def stage_profile(q: int, device: str, rows: list, toy: dict) -> None:
    from benchmarks.profile_step import run
    kw = {**SIZES["profile"][q], **toy.get("profile", {})}
    res = run(device=device, top_ops=10, **kw)
    backward = res["stages"]["backward"] / res["step"]
    rows.append(_row("profile: backward share of the step", f"{100 * backward:.1f}%", "-", "-", "(info)", None))


def stage_assign_loss(q: int, device: str, rows: list, toy: dict) -> float | None:
    """Returns the images per second of the RetinaNet R50 step it measured (for the data-loading stage)."""
    from benchmarks.assign_loss import run
    kw = {**SIZES["assign_loss"][q], **toy.get("assign_loss", {})}
    res = run(device=device, **kw)
    step_boxes = kw.get("step_boxes", 50)
    for name, r in res.items():
        share = r["rows"][step_boxes]["share"]
        rows.append(_row(f"assign + loss share, {name} ({kw['size']} px, {step_boxes} boxes)", f"{100 * share:.2f}%",
                         "-", "-", f"<= {100 * r['target']:.0f}%", r["met"]))
    if "retinanet" in res:
        return kw.get("batch", 2) / res["retinanet"]["rows"][step_boxes]["step"]
    return None


def stage_coco(q: int, device: str, rows: list, toy: dict) -> None:
    try:
        coco_eval = importlib.import_module("benchmarks.coco_eval")
    except ImportError:
        rows.append(_row("COCO eval", "benchmarks/coco_eval.py missing", "-", "-", "-", None))
        return
    kw = {**SIZES["coco"][q], **toy.get("coco", {})}
    reports = coco_eval.run(**kw)
    print(coco_eval.format_table(reports))
    base = reports.get("pycocotools", {})
    for backend in ("fast", "faster-coco-eval"):
        r = reports.get(backend)
        if not r or "seconds" not in r or "seconds" not in base:
            continue
        same = r.get("max_diff") is not None and r["max_diff"] <= 1e-9
        name = "ours (fast)" if backend == "fast" else "faster-coco-eval"
        rows.append(_row(f"COCO eval {kw['images']} images: {name}", f"{r['seconds']:.2f} s",
                         f"{base['seconds']:.2f} s (pycocotools)", f"{r['seconds'] / base['seconds']:.3f}",
                         "< 1, same 12 stats", r["seconds"] < base["seconds"] and same))


def stage_lvis(q: int, device: str, rows: list, toy: dict) -> None:
    from benchmarks.lvis_eval import run
    kw = {**SIZES["lvis"][q], **toy.get("lvis", {})}
    res = run(**kw)
    fast, api = res["fast"], res["lvis-api"]
    if "seconds" in fast and "seconds" in api:
        same = res["max_diff"] is not None and res["max_diff"] <= 1e-9
        rows.append(_row(f"LVIS eval {res['images']} images: ours (fast)", f"{fast['seconds']:.2f} s",
                         f"{api['seconds']:.2f} s (lvis-api)", f"{fast['seconds'] / api['seconds']:.3f}",
                         "< 1, same metrics", fast["seconds"] < api["seconds"] and same))
    else:
        rows.append(_row("LVIS eval", str(fast.get("failed")), str(api.get("failed")), "-", "-", None))


def stage_data(q: int, device: str, rows: list, toy: dict, step_rate: float | None = None) -> None:
    from benchmarks.data_loading import run
    kw = {**SIZES["data"][q], **toy.get("data", {})}
    kw.setdefault("step_images_per_s", step_rate)
    res = run(measure_step=kw["step_images_per_s"] is None, **kw)
    best = max(res["rates"], key=res["rates"].get)
    step = res["step_images_per_s"]
    rows.append(_row(f"training loader ({kw['size']} px), best: {best} workers", f"{res['rates'][best]:.1f} img/s",
                     f"{step:.2f} img/s (R50 step)" if step else "-",
                     f"{res['rates'][best] / step:.1f}" if step else "-", ">= 1 (keeps up)",
                     res["rates"][best] >= step if step else None))


def stage_features(q: int, device: str, rows: list, toy: dict, compile_: bool = False) -> None:
    from benchmarks.speed_features import run
    kw = {**SIZES["features"][q], **toy.get("features", {})}
    res = run(device=device, compile_=compile_, **kw)
    for model, per_feature in res.items():
        base = per_feature["baseline"]["step"]
        for feature, r in per_feature.items():
            if feature == "baseline":
                continue
            rows.append(_row(f"speed feature {feature}, {model}", f"{r['step']:.3f} s", f"{base:.3f} s (off)",
                             f"{r['step'] / base:.3f}", "(info; on by default only if < 1 and exact)", None))


def stage_predict(q: int, device: str, rows: list, toy: dict) -> None:
    from benchmarks.predict import run
    kw = {**SIZES["predict"][q], **toy.get("predict", {})}
    res = run(**kw)  # on the CPU
    rows.append(_row(f"Detector.predict, {kw['num_images']} images of mixed sizes (CPU)",
                     f"{res['focaldet']:.3g} img/s", f"{res['torchvision']:.3g} img/s (torchvision)",
                     f"{res['speedup']:.3f} (speed-up)", ">= 1", res["speedup"] >= 1))


STAGES = {"train_step": stage_train_step, "profile": stage_profile, "assign_loss": stage_assign_loss,
          "coco": stage_coco, "lvis": stage_lvis, "data": stage_data, "features": stage_features,
          "predict": stage_predict}


def run(quick: bool = False, device: str | None = None, stages=tuple(STAGES), compile_: bool = False,
        toy: dict | None = None) -> list[list]:
    """Run the stages; return (and print) the summary rows. ``toy`` overrides stage keyword arguments."""
    device = device or default_device()
    toy = toy or {}
    q = 1 if quick else 0
    rows: list[list] = []
    step_rate = None
    for name in stages:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            if name == "data":
                stage_data(q, device, rows, toy, step_rate)
            elif name == "assign_loss":
                step_rate = stage_assign_loss(q, device, rows, toy)
            elif name == "features":
                stage_features(q, device, rows, toy, compile_)
            else:
                STAGES[name](q, device, rows, toy)
        except Exception as err:  # one broken stage must not hide the others' results
            traceback.print_exc()
            rows.append(_row(name, f"failed: {type(err).__name__}: {err}"[:80], "-", "-", "-", False))
        print(f"({name}: {time.perf_counter() - start:.0f} s wall)", flush=True)
    print(f"\nSummary ({'quick' if quick else 'full'}, device {device}, {clock_name()}, torch {torch.__version__})")
    print_table(["stage", "ours", "peer", "ratio", "target", "met?"], rows)
    return rows


def main(argv=None) -> list[list]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and repeats (< 10 min on 2 cores)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--cpu-clock", action="store_true", help="one thread, thread CPU time (a busy machine)")
    args = parser.parse_args(argv)
    use_cpu_clock(args.cpu_clock)
    return run(args.quick, args.device, args.stages, args.compile)


if __name__ == "__main__":
    main()
