"""COCO box evaluation: time, CPU and peak memory of the fast backend against pycocotools (and
faster-coco-eval when it is installed), on synthetic COCO-val-sized data.

Generates a ground truth like COCO val2017 (5000 images, 80 categories with a long-tailed popularity,
~7 boxes per image with a heavy tail, ~41% small / 34% medium / 25% large boxes, ~1% crowd regions,
``area`` smaller than the box as a mask's would be) and a results file with 100 detections per image
(1-3 jittered copies of each ground truth, 15% of them under another category, the rest random boxes
with lower scores; scores rounded to 3 digits, so ties occur), then runs each backend in its own
subprocess and reads that child's peak RSS and CPU time from ``os.wait4``.

* pycocotools: ``COCO(gt)``, ``loadRes(results.json)``, ``COCOeval`` evaluate + accumulate + summarize.
* fast: ``COCOEvaluator(gt, backend="fast")`` + ``load_results_columnar(results.json)`` + ``evaluate``.
* faster-coco-eval (optional, not a project dependency): its ``COCO`` / ``loadRes`` / ``COCOeval_faster``.

Every child imports ``detector.evaluation`` (which imports torch) before the clock starts, so wall
seconds count loading the files and evaluating; child CPU seconds (user + system) include the imports.
The metrics of every backend are compared with pycocotools' 12 ``stats``.

Usage::

    python benchmarks/coco_eval.py                        # 5000 images x 100 detections
    python benchmarks/coco_eval.py --images 500 --dets-per-image 50
    python benchmarks/coco_eval.py --skip-pycocotools     # fast (and faster-coco-eval) only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/coco_eval.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.lvis_eval import _rss_mb, write_results_json  # noqa: E402

STATS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "fast", "faster-coco-eval")
SIZE_MIX = ((0.41, 4.0, 32.0), (0.34, 32.0, 96.0), (0.25, 96.0, 600.0))  # (share, min side, max side)


def make_ground_truth(num_images: int, num_classes: int = 80, seed: int = 0) -> dict:
    """A synthetic COCO-val-like annotation dict; image i depends only on (seed, i)."""
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0, 1.2, num_classes)
    popularity[0] *= 15  # one dominant class, like "person"
    popularity /= popularity.sum()
    categories = [{"id": k + 1, "name": f"class_{k + 1:02d}", "supercategory": "thing"} for k in range(num_classes)]
    share = np.array([s for s, _, _ in SIZE_MIX])
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        irng = np.random.default_rng([seed, image_id])
        width, height = int(irng.choice([640, 480, 500, 427])), int(irng.choice([480, 427, 375, 640]))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        num_boxes = min(60, int(irng.negative_binomial(1.5, 1.5 / (1.5 + 7.0))))
        if num_boxes == 0:
            continue
        cats = irng.choice(num_classes, size=num_boxes, p=popularity)
        size = irng.choice(len(SIZE_MIX), size=num_boxes, p=share)
        lo, hi = np.array([m for _, m, _ in SIZE_MIX])[size], np.array([m for _, _, m in SIZE_MIX])[size]
        side = np.exp(irng.uniform(np.log(lo), np.log(np.minimum(hi, min(width, height) - 1))))
        aspect = np.exp(irng.normal(0, 0.5, num_boxes))
        w, h = np.minimum(side * np.sqrt(aspect), width - 1), np.minimum(side / np.sqrt(aspect), height - 1)
        x, y = irng.uniform(0, width - w), irng.uniform(0, height - h)
        crowd = irng.random(num_boxes) < 0.01
        fill = irng.uniform(0.55, 0.9, num_boxes)
        for k, bx, by, bw, bh, c, f in zip(cats.tolist(), *(np.round(v, 2).tolist() for v in (x, y, w, h)),
                                           crowd.tolist(), fill.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": k + 1,
                                "bbox": [bx, by, bw, bh], "area": round(bw * bh * f, 2), "iscrowd": int(c)})
    return {"images": images, "annotations": annotations, "categories": categories}


def make_results(gt: dict, dets_per_image: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """``dets_per_image`` detections per image as columns: jittered copies of the ground truth (some under
    another category) scored 0.2-1, then random boxes of the image's or any category scored 0-0.6."""
    rng = np.random.default_rng([seed, 11])
    num_images, num_classes = len(gt["images"]), len(gt["categories"])
    sizes = np.array([[img["width"], img["height"]] for img in gt["images"]], dtype=np.float64)
    gt_image = np.array([a["image_id"] - 1 for a in gt["annotations"]], dtype=np.int64)
    gt_cat = np.array([a["category_id"] for a in gt["annotations"]], dtype=np.int64)
    gt_box = np.array([a["bbox"] for a in gt["annotations"]], dtype=np.float64).reshape(-1, 4)

    src = np.repeat(np.arange(len(gt_image)), rng.integers(1, 4, size=len(gt_image)))
    src = src[np.argsort(gt_image[src], kind="stable")]
    rank = np.arange(len(src)) - np.searchsorted(gt_image[src], gt_image[src])
    src = src[rank < dets_per_image]
    jitter = rng.normal(0, 0.1, (len(src), 4)) * np.repeat(gt_box[src, 2:], 2, axis=1)
    true_box = gt_box[src] + jitter
    true_box[:, 2:] = np.maximum(true_box[:, 2:], 1.0)
    true_cat = np.where(rng.random(len(src)) < 0.85, gt_cat[src], rng.integers(1, num_classes + 1, len(src)))

    rand_image = np.repeat(np.arange(num_images), dets_per_image - np.bincount(gt_image[src], minlength=num_images))
    n = len(rand_image)
    side = np.exp(rng.uniform(np.log(6), np.log(400), n))
    wh = np.minimum(np.stack([side * rng.uniform(0.5, 1.5, n), side * rng.uniform(0.5, 1.5, n)], 1),
                    sizes[rand_image] - 1)
    xy = rng.uniform(0, 1, (n, 2)) * (sizes[rand_image] - wh)
    per_image_gt = np.bincount(gt_image, minlength=num_images)
    first_gt = np.r_[0, np.cumsum(per_image_gt)[:-1]]
    own = per_image_gt[rand_image] > 0
    pick = first_gt[rand_image] + (rng.random(n) * per_image_gt[rand_image]).astype(np.int64)
    rand_cat = np.where(own & (rng.random(n) < 0.5), gt_cat[np.minimum(pick, len(gt_cat) - 1)],
                        rng.integers(1, num_classes + 1, n))

    image_id = np.r_[gt_image[src], rand_image] + 1
    order = np.argsort(image_id, kind="stable")
    return {
        "image_id": image_id[order],
        "category_id": np.r_[true_cat, rand_cat][order],
        "bbox": np.round(np.r_[true_box, np.c_[xy, wh]][order], 2),
        "score": np.round(np.r_[rng.uniform(0.2, 1.0, len(src)), rng.uniform(0.0, 0.6, n)][order], 3),
    }


def ensure_files(work_dir: Path, num_images: int, dets_per_image: int, seed: int) -> tuple[Path, Path]:
    """Write (once) the ground truth and results files for these settings; return their paths."""
    gt_path = work_dir / f"coco_gt_{num_images}_s{seed}.json"
    results_path = work_dir / f"coco_results_{num_images}x{dets_per_image}_s{seed}.json"
    if not (gt_path.is_file() and results_path.is_file()):
        start = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        gt = make_ground_truth(num_images, seed=seed)
        gt_path.write_text(json.dumps(gt))
        write_results_json(results_path, make_results(gt, dets_per_image, seed))
        print(f"generated {num_images} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return gt_path, results_path


def worker(backend: str, gt_path: str, results_path: str) -> dict:
    """Evaluate with one backend; the clock starts after the imports (all import detector.evaluation)."""
    import contextlib
    import io

    from detector.evaluation import COCOEvaluator, load_results_columnar

    if backend == "faster-coco-eval":
        import faster_coco_eval as library
    else:
        import pycocotools.coco as library  # noqa: F401
        from pycocotools.cocoeval import COCOeval
    baseline_mb = _rss_mb()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "fast":
            evaluator = COCOEvaluator(gt_path, backend="fast")
            loaded = time.perf_counter()
            results = load_results_columnar(results_path)
            num_dets = len(results["score"])
            metrics = evaluator.evaluate(results)
            stats = [metrics[key] for key in STATS_KEYS]
        else:
            coco_gt = library.COCO(gt_path)
            loaded = time.perf_counter()
            coco_dt = coco_gt.loadRes(results_path)
            num_dets = len(coco_dt.anns)
            evaluator_class = library.COCOeval_faster if backend == "faster-coco-eval" else COCOeval
            coco_eval = evaluator_class(coco_gt, coco_dt, iouType="bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            stats = [float(v) for v in coco_eval.stats[: len(STATS_KEYS)]]
    end = time.perf_counter()
    return {"seconds": end - start, "gt_seconds": loaded - start, "detections": num_dets,
            "baseline_mb": baseline_mb, "stats": stats}


def run_in_child(backend: str, gt_path: Path, results_path: Path) -> dict:
    """Run ``worker`` in a subprocess; add its peak RSS (MB) and CPU seconds read from os.wait4."""
    out_path = results_path.with_name(f"{results_path.stem}.{backend}.out.json")
    command = [sys.executable, __file__, "--worker", backend, str(gt_path), str(results_path), str(out_path)]
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"failed": f"exit code {os.waitstatus_to_exitcode(status)}", "peak_mb": usage.ru_maxrss / 1024}
    report = json.loads(out_path.read_text())
    report["peak_mb"] = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    report["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return report


def run(images: int = 5000, dets_per_image: int = 100, backends: tuple[str, ...] = BACKENDS,
        work_dir: Path = Path("work_dirs/bench_coco"), seed: int = 0, in_process: bool = False) -> dict[str, dict]:
    """{backend: report} for the available ``backends``; ``in_process`` skips the subprocesses (no
    memory or CPU figures: for toy sizes).  Reports gain ``max_diff`` against pycocotools when it ran."""
    if "faster-coco-eval" in backends and importlib.util.find_spec("faster_coco_eval") is None:
        backends = tuple(b for b in backends if b != "faster-coco-eval")
    gt_path, results_path = ensure_files(Path(work_dir), images, dets_per_image, seed)
    reports = {}
    for backend in backends:
        reports[backend] = (worker(backend, str(gt_path), str(results_path)) if in_process
                            else run_in_child(backend, gt_path, results_path))
    reference = reports.get("pycocotools", {}).get("stats")
    for report in reports.values():
        if reference is not None and "stats" in report:
            report["max_diff"] = max(abs(a - b) for a, b in zip(report["stats"], reference))
    return reports


def format_table(reports: dict[str, dict]) -> str:
    """A Markdown table: wall / CPU seconds, peak MB, speed-up and max |metric difference| vs pycocotools."""
    base = reports.get("pycocotools", {}).get("seconds")
    lines = ["| backend | detections | wall s (gt load) | speed-up | child CPU s | peak MB (above imports) | AP "
             "| max abs diff vs pycocotools |", "|" + " --- |" * 8]
    for backend, r in reports.items():
        if "failed" in r:
            lines.append(f"| {backend} | - | {r['failed']} | - | - | {r['peak_mb']:.0f} | - | - |")
            continue
        speed = f"{base / r['seconds']:.1f}x" if base else "-"
        cpu = f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "-"
        peak = f"{r['peak_mb']:.0f} ({r['peak_mb'] - r['baseline_mb']:.0f})" if "peak_mb" in r else "-"
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else "-"
        lines.append(f"| {backend} | {r['detections']} | {r['seconds']:.1f} ({r['gt_seconds']:.1f}) | {speed} "
                     f"| {cpu} | {peak} | {r['stats'][0]:.4f} | {diff} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        backend, gt_path, results_path, out_path = argv[1:5]
        Path(out_path).write_text(json.dumps(worker(backend, gt_path, results_path)))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--skip-pycocotools", action="store_true")
    parser.add_argument("--skip-faster-coco-eval", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="no subprocesses (no CPU / memory figures)")
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/bench_coco"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    skip = {name for name, off in (("pycocotools", args.skip_pycocotools),
                                   ("faster-coco-eval", args.skip_faster_coco_eval)) if off}
    reports = run(args.images, args.dets_per_image, tuple(b for b in BACKENDS if b not in skip),
                  args.work_dir, args.seed, args.in_process)
    print(f"{args.images} images x {args.dets_per_image} detections")
    print(format_table(reports))
    return reports


if __name__ == "__main__":
    main()
