"""LVIS box evaluation: time and peak memory of the fast backend against lvis-api, on synthetic data.

Generates an LVIS-v1-val-sized ground truth (20k images, 1203 categories: 337 rare, 461 common,
405 frequent; ~12 boxes per image with a heavy tail of crowded images; negative and not-exhaustive
category lists) and a results file with 300 detections per image (jittered copies of the ground truth,
confusions with other categories, random boxes), then runs each backend in its own subprocess and
reads that child's peak RSS from ``os.wait4``.

* fast: ``LVISEvaluator(backend="fast")`` + ``load_results_columnar`` (streamed JSON).
* lvis-api: ``lvis.LVISEval(gt_path, results_path, "bbox").run()`` as its users call it (through the
  NumPy 2 shim); it does not fit in memory at 20k images, so it runs on the first
  ``--api-max-images`` images (a prefix of the same generator), where the fast backend runs too and the
  metrics are compared.

Wall seconds start after the imports (torch comes with ``detector.evaluation``); child CPU seconds (user +
system, from ``os.wait4``) include the imports but no other process, so they hold up on a shared machine.

Usage::

    python benchmarks/lvis_eval.py                                   # 20k images; lvis-api at 2k
    python benchmarks/lvis_eval.py --api-max-images 5000             # lvis-api needs ~6.6 GB there
    python benchmarks/lvis_eval.py --images 1000 --api-max-images 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FREQUENCY_COUNTS = {"r": 337, "c": 461, "f": 405}  # LVIS v1
DETS_PER_IMAGE = 300


def make_ground_truth(num_images: int, seed: int) -> dict:
    """A synthetic LVIS v1-like annotation dict; image i depends only on (seed, i), so smaller sets are
    prefixes of larger ones."""
    rng = np.random.default_rng(seed)
    frequency = np.array([f for f, n in FREQUENCY_COUNTS.items() for _ in range(n)])
    rng.shuffle(frequency)
    num_cats = len(frequency)
    popularity = np.select([frequency == "f", frequency == "c"], [1.0, 0.08], 0.005) * rng.lognormal(0, 1, num_cats)
    popularity /= popularity.sum()
    categories = [
        {"id": k + 1, "name": f"category_{k + 1:04d}", "frequency": str(frequency[k]), "synset": f"synset.{k + 1}"}
        for k in range(num_cats)
    ]
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        irng = np.random.default_rng([seed, image_id])
        width, height = int(irng.choice([640, 480, 500])), int(irng.choice([480, 427, 375]))
        num_boxes = min(250, 1 + int(irng.negative_binomial(1.2, 1.2 / (1.2 + 11.0))))
        num_pos = min(num_boxes, 1 + int(irng.poisson(2.5)))
        positive = irng.choice(num_cats, size=num_pos, replace=False, p=popularity)
        share = irng.dirichlet(np.full(num_pos, 0.7))
        box_cats = np.r_[positive, irng.choice(positive, size=num_boxes - num_pos, p=share)]
        side = np.exp(irng.uniform(np.log(6), np.log(min(width, height)), num_boxes))
        aspect = np.exp(irng.normal(0, 0.5, num_boxes))
        w = np.minimum(side * np.sqrt(aspect), width - 1)
        h = np.minimum(side / np.sqrt(aspect), height - 1)
        x, y = irng.uniform(0, width - w), irng.uniform(0, height - h)
        for cat, bx, by, bw, bh in zip(box_cats.tolist(), *(np.round(v, 2).tolist() for v in (x, y, w, h))):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat + 1,
                    "bbox": [bx, by, bw, bh],
                    "area": round(bw * bh * 0.8, 2),  # a mask is smaller than its box
                    "segmentation": [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]],
                }
            )
        others = np.setdiff1d(irng.choice(num_cats, size=8, replace=False, p=popularity), positive)
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "file_name": f"{image_id:012d}.jpg",
                "neg_category_ids": (others + 1).tolist(),
                "not_exhaustive_category_ids": (positive[irng.random(num_pos) < 0.1] + 1).tolist(),
            }
        )
    return {"images": images, "annotations": annotations, "categories": categories}


def make_results(gt: dict, seed: int) -> dict[str, np.ndarray]:
    """300 detections per image: 1-3 jittered copies of each ground truth (sometimes another category),
    the rest random boxes of the image's positive, negative or any category, lower scored."""
    rng = np.random.default_rng([seed, 7])
    num_images, num_cats = len(gt["images"]), len(gt["categories"])
    sizes = np.array([[img["width"], img["height"]] for img in gt["images"]], dtype=np.float64)
    gt_image = np.array([a["image_id"] - 1 for a in gt["annotations"]])
    gt_cat = np.array([a["category_id"] for a in gt["annotations"]])
    gt_box = np.array([a["bbox"] for a in gt["annotations"]])

    copies = rng.integers(1, 4, size=len(gt_image))
    src = np.repeat(np.arange(len(gt_image)), copies)
    src = src[rng.permutation(len(src))]
    src = src[np.argsort(gt_image[src], kind="stable")]
    rank = np.arange(len(src)) - np.searchsorted(gt_image[src], gt_image[src])
    src = src[rank < DETS_PER_IMAGE]  # at most 300 per image
    jitter = rng.normal(0, 0.12, (len(src), 4)) * np.repeat(gt_box[src, 2:], 2, axis=1)
    true_box = gt_box[src] + jitter
    true_cat = np.where(rng.random(len(src)) < 0.85, gt_cat[src], rng.integers(1, num_cats + 1, len(src)))
    true_score = rng.uniform(0.2, 1.0, len(src))

    num_true = np.bincount(gt_image[src], minlength=num_images)
    rand_image = np.repeat(np.arange(num_images), DETS_PER_IMAGE - num_true)
    n = len(rand_image)
    side = np.exp(rng.uniform(np.log(8), np.log(300), n))
    wh = np.stack([side * rng.uniform(0.5, 1.5, n), side * rng.uniform(0.5, 1.5, n)], 1)
    wh = np.minimum(wh, sizes[rand_image] - 1)
    xy = rng.uniform(0, 1, (n, 2)) * (sizes[rand_image] - wh)
    per_image_gt = np.bincount(gt_image, minlength=num_images)
    gt_start = np.r_[0, np.cumsum(per_image_gt)[:-1]]
    neg = [img["neg_category_ids"] or [1] for img in gt["images"]]
    neg_flat, neg_start = np.concatenate(neg), np.r_[0, np.cumsum([len(v) for v in neg])[:-1]]
    pick = rng.random(n)
    pos_cat = gt_cat[gt_start[rand_image] + (rng.random(n) * per_image_gt[rand_image]).astype(int)]
    neg_count = np.array([len(v) for v in neg])
    neg_cat = neg_flat[neg_start[rand_image] + (rng.random(n) * neg_count[rand_image]).astype(int)]
    rand_cat = np.select([pick < 0.3, pick < 0.5], [pos_cat, neg_cat], rng.integers(1, num_cats + 1, n))

    image_id = np.r_[gt_image[src], rand_image] + 1
    order = np.argsort(image_id, kind="stable")
    return {
        "image_id": image_id[order],
        "category_id": np.r_[true_cat, rand_cat][order],
        "bbox": np.round(np.r_[true_box, np.c_[xy, wh]][order], 2),
        "score": np.round(np.r_[true_score, rng.uniform(0.0, 0.6, n)][order], 6),
    }


def write_results_json(path: Path, columns: dict[str, np.ndarray], chunk: int = 200_000) -> None:
    """COCO-format results JSON, written in chunks (a list of 6M dicts would need ~3 GB)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        for start in range(0, len(columns["score"]), chunk):
            keys = ("image_id", "category_id", "bbox", "score")
            rows = zip(*(columns[key][start : start + chunk].tolist() for key in keys))
            text = ", ".join(
                f'{{"image_id": {i}, "category_id": {c}, "bbox": [{b[0]}, {b[1]}, {b[2]}, {b[3]}], "score": {s}}}'
                for i, c, b, s in rows
            )
            f.write((", " if start else "") + text)
        f.write("]")


def ensure_files(work_dir: Path, num_images: int, seed: int) -> tuple[Path, Path]:
    gt_path = work_dir / f"lvis_gt_{num_images}_s{seed}.json"
    results_path = work_dir / f"lvis_results_{num_images}_s{seed}.json"
    if not (gt_path.is_file() and results_path.is_file()):
        start = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        gt = make_ground_truth(num_images, seed)
        gt_path.write_text(json.dumps(gt))
        write_results_json(results_path, make_results(gt, seed))
        print(f"generated {num_images} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return gt_path, results_path


def _rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def worker(backend: str, gt_path: str, results_path: str) -> dict:
    """Runs in the child process.  Both backends import detector.evaluation (which imports torch) first;
    the clock starts and the baseline RSS is taken after the imports."""
    from detector.evaluation import LVISEvaluator, load_results_columnar
    from detector.evaluation.lvis_compat import import_lvis

    lvis = import_lvis() if backend == "lvis-api" else None
    baseline_mb = _rss_mb()
    start = time.perf_counter()
    if backend == "fast":
        evaluator = LVISEvaluator(gt_path, backend="fast")
        loaded = time.perf_counter()
        results = load_results_columnar(results_path)
        num_dets = len(results["score"])
        metrics = evaluator.evaluate(results)
    else:
        lvis_gt = lvis.LVIS(gt_path)
        loaded = time.perf_counter()
        lvis_eval = lvis.LVISEval(lvis_gt, results_path, iou_type="bbox")
        num_dets = len(lvis_eval.lvis_dt.anns)
        lvis_eval.run()
        metrics = {key: float(value) for key, value in lvis_eval.results.items()}
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "gt_seconds": loaded - start,
        "detections": num_dets,
        "baseline_mb": baseline_mb,
        "metrics": metrics,
    }


def run_in_child(backend: str, gt_path: Path, results_path: Path) -> dict:
    """Run ``worker`` in a subprocess; add its peak RSS (MB) read from os.wait4."""
    out_path = results_path.with_name(f"{results_path.stem}.{backend}.out.json")
    command = [sys.executable, __file__, "--worker", backend, str(gt_path), str(results_path), str(out_path)]
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"failed": f"exit code {proc.returncode}", "peak_mb": usage.ru_maxrss / 1024}
    report = json.loads(out_path.read_text())
    report["peak_mb"] = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    report["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # whole child, imports included
    return report


def run(images: int = 20_000, api_max_images: int = 2_000, work_dir: Path = Path("work_dirs/bench_lvis"),
        seed: int = 0, verbose: bool = True) -> dict:
    """Reports of the fast backend and lvis-api on the same ``min(images, api_max_images)`` images (plus the
    fast one alone on ``images`` when more) and whether their metrics are equal; prints the table."""
    rows = []
    compare_images = min(images, api_max_images)
    gt_path, results_path = ensure_files(Path(work_dir), compare_images, seed)
    fast = run_in_child("fast", gt_path, results_path)
    api = run_in_child("lvis-api", gt_path, results_path)
    equal, worst = "-", None
    if "failed" not in fast and "failed" not in api:
        api_metrics = {key.split("@")[0]: value for key, value in api["metrics"].items()}  # "AR@300" -> "AR"
        fast_metrics = {("AR" if key == "AR300" else key): value for key, value in fast["metrics"].items()}
        worst = max(abs(fast_metrics[key] - api_metrics[key]) for key in api_metrics)
        equal = f"identical ({len(api_metrics)} metrics)" if worst == 0 else (
            f"yes (max diff {worst:.1e})" if worst <= 1e-9 else f"NO (max diff {worst:.1e})"
        )
    rows += [(compare_images, "fast", fast, equal), (compare_images, "lvis-api", api, equal)]
    if images > compare_images:
        gt_path, results_path = ensure_files(Path(work_dir), images, seed)
        rows.append((images, "fast", run_in_child("fast", gt_path, results_path), "-"))
    if verbose:
        print_rows(rows)
    return {"fast": fast, "lvis-api": api, "max_diff": worst, "images": compare_images,
            "fast_all": rows[2][2] if len(rows) > 2 else None}


def print_rows(rows: list) -> None:
    header = ["images", "detections", "backend", "wall s (gt load)", "child CPU s", "peak MB (above imports)"]
    header += ["AP", "APr", "APc", "APf", "metrics equal"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for images, backend, report, same in rows:
        if "failed" in report:
            print(f"| {images} | - | {backend} | {report['failed']} | - | {report['peak_mb']:.0f} | | | | | - |")
            continue
        m = report["metrics"]
        print(
            f"| {images} | {report['detections']} | {backend} | {report['seconds']:.1f} ({report['gt_seconds']:.1f}) "
            f"| {report['cpu_seconds']:.1f} "
            f"| {report['peak_mb']:.0f} ({report['peak_mb'] - report['baseline_mb']:.0f}) "
            + "".join(f"| {m[key]:.4f} " for key in ("AP", "APr", "APc", "APf"))
            + f"| {same} |"
        )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        backend, gt_path, results_path, out_path = argv[1:5]
        Path(out_path).write_text(json.dumps(worker(backend, gt_path, results_path)))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="images of the fast-only run")
    parser.add_argument("--api-max-images", type=int, default=2_000, help="images of the fast vs lvis-api run")
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/bench_lvis"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run(args.images, args.api_max_images, args.work_dir, args.seed)


if __name__ == "__main__":
    main()
