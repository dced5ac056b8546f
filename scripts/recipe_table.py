"""The training-recipe switches on the synthetic quick start: each alone, and the modern combination, over seeds.

    python scripts/recipe_table.py --seeds 0 1 2 --iters 650 --jobs 2 --out work_dirs/recipes

Trains configs/recipes/quickstart_{ema,adamw,cosine,jitter,modern}.yaml for each seed (through
scripts/compare_configs.py's runner: <out>/<config stem>_s<seed>, finished runs are not run again) with the same
budget (``--iters``; the lr steps, warm-up and every other setting as the quick start, steps scaled to the
length), then scores with tools/eval.py:

- the plain quick start: the EMA run's raw weights (the moving average does not change the training trajectory,
  so the raw weights of that run are the quick start's own, and the two rows are paired on the same run);
- test-time augmentation on those raw weights: a flip, and a flip at three scales.

The table gives, per row, the mean and sample standard deviation over seeds of AP, AP50 and AP75 (percent) and
the mean of the per-seed differences in AP from the plain quick start (paired by seed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_configs import ROOT, final_metrics, run  # noqa: E402  (scripts/ is not a package)

RECIPES = ["ema", "adamw", "cosine", "jitter", "modern"]
TTA = {"flip": "{flips: [false, true]}",
       "flip + scales 128/160/192": "{scales: [128, 160, 192], flips: [false, true], max_size: 240}"}
METRICS = ["AP", "AP50", "AP75"]


def schedule_opts(iters: int) -> list[str]:
    """The quick start's schedule (1300 iterations, lr / 10 at 1080 and 1250) scaled to ``iters``."""
    return [f"schedule.iters={iters}", f"schedule.steps=[{round(iters * 1080 / 1300)},{round(iters * 1250 / 1300)}]"]


def train_all(out: Path, seeds: list[int], iters: int, jobs: int) -> None:
    todo = [(name, seed) for seed in seeds for name in RECIPES
            if final_metrics(out / f"quickstart_{name}_s{seed}") is None]

    def train(item: tuple[str, int]) -> None:
        name, seed = item
        seconds = run(f"configs/recipes/quickstart_{name}.yaml", seed, out / f"quickstart_{name}_s{seed}",
                      schedule_opts(iters))
        print(f"{name} seed {seed}: {seconds:.0f} s", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(train, todo))


def evaluate(checkpoint: Path, metrics_out: Path, opts: list[str]) -> dict:
    """tools/eval.py on the raw weights of ``checkpoint`` (once: the metrics file is reused)."""
    if not metrics_out.is_file():
        command = [sys.executable, str(ROOT / "tools" / "eval.py"), str(checkpoint), "--raw-weights", "--no-progress",
                   "--metrics-out", str(metrics_out), "--opts", *opts]
        with open(metrics_out.with_suffix(".log"), "w") as log:
            subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(metrics_out.read_text())


def collect(out: Path, seeds: list[int]) -> dict[str, list[dict]]:
    """Per row, the metrics of each seed."""
    rows: dict[str, list[dict]] = {"quick start (SGD, steps)": []}
    rows.update({f"+ TTA {name}": [] for name in TTA})
    rows.update({"+ EMA": [], "+ AdamW": [], "+ cosine": [], "+ scale jitter": [],
                 "AdamW + cosine + EMA + jitter": []})
    for seed in seeds:
        ema_run = out / f"quickstart_ema_s{seed}"
        checkpoint = ema_run / "checkpoints" / "last.pt"
        rows["quick start (SGD, steps)"].append(evaluate(checkpoint, ema_run / "eval_raw.json", []))
        for index, (name, tta) in enumerate(TTA.items()):
            rows[f"+ TTA {name}"].append(evaluate(checkpoint, ema_run / f"eval_raw_tta{index}.json",
                                                  [f"evaluation.tta={tta}"]))
        for row, name in (("+ EMA", "ema"), ("+ AdamW", "adamw"), ("+ cosine", "cosine"),
                          ("+ scale jitter", "jitter"), ("AdamW + cosine + EMA + jitter", "modern")):
            rows[row].append(finished(out / f"quickstart_{name}_s{seed}"))
    return rows


def finished(work_dir: Path) -> dict:
    """The final evaluation of a run, or exit naming the run that has none."""
    metrics = final_metrics(work_dir)
    if metrics is None:
        raise SystemExit(f"{work_dir}: the run wrote no final evaluation (see {work_dir}.log)")
    return metrics


def format_table(rows: dict[str, list[dict]], seeds: list[int]) -> str:
    baseline = [100 * m["AP"] for m in rows["quick start (SGD, steps)"]]
    lines = [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); mean ± sample std, in percent; ΔAP: mean of "
             "the per-seed differences from the quick start", "",
             "| recipe | " + " | ".join(METRICS) + " | ΔAP |", "| --- |" + " ---: |" * (len(METRICS) + 1)]
    for row, per_seed in rows.items():
        cells = []
        for name in METRICS:
            values = [100 * m[name] for m in per_seed]
            cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0:.1f}")
        differences = [100 * m["AP"] - base for m, base in zip(per_seed, baseline)]
        delta = "" if row.startswith("quick start") else (
            f"{statistics.mean(differences):+.1f} ± {statistics.stdev(differences) if len(differences) > 1 else 0:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=1300, help="training iterations of every run (default: the "
                                                                "quick start's 1300)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each then gets OMP_NUM_THREADS=1 "
                                                            "unless set)")
    parser.add_argument("--out", default="work_dirs/recipes")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    train_all(out, args.seeds, args.iters, args.jobs)
    print(format_table(collect(out, args.seeds), args.seeds))


if __name__ == "__main__":
    main()
