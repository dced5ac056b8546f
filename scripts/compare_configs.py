"""Train several configs over several seeds and print their final metrics as a markdown table (mean and spread).

    python scripts/compare_configs.py configs/quickstart_lvis_fl.yaml configs/quickstart_lvis_efl.yaml \\
        --seeds 0 1 2 --metrics AP APr APc APf

Each (config, seed) run goes to <out>/<config stem>_s<seed> through tools/train.py (with runtime.seed=<seed>
and any --opts); a run whose metrics.jsonl already holds a final evaluation is not run again, so an
interrupted comparison resumes where it stopped. The table gives, per config, the mean and the sample
standard deviation over seeds of each metric (in percent), and the seconds each run took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def final_metrics(work_dir: Path) -> dict | None:
    """The last ``val/*`` record of a run's metrics.jsonl, without the prefix, or None."""
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evaluations = [r for r in records if any(key.startswith("val/") for key in r)]
    if not evaluations:
        return None
    return {key[4:]: value for key, value in evaluations[-1].items() if key.startswith("val/")}


def run(config: str, seed: int, work_dir: Path, opts: list[str]) -> float:
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "tools" / "train.py"), config, "--work-dir", str(work_dir),
               "--no-progress", "--opts", f"runtime.seed={seed}", *opts]
    with open(work_dir.with_suffix(".log"), "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--metrics", nargs="+", default=["AP", "AP50", "AP75"])
    parser.add_argument("--out", default="work_dirs/compare")
    parser.add_argument("--opts", nargs="*", default=[], help="overrides for every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for config in args.configs:
        per_seed, seconds = [], []
        for seed in args.seeds:
            work_dir = out / f"{Path(config).stem}_s{seed}"
            if final_metrics(work_dir) is None:
                seconds.append(run(config, seed, work_dir, args.opts))
                print(f"{config} seed {seed}: {seconds[-1]:.0f} s", flush=True)
            metrics = final_metrics(work_dir)
            if metrics is None:
                raise SystemExit(f"{work_dir}: the run wrote no final evaluation (see {work_dir}.log)")
            per_seed.append(metrics)
        rows.append((config, per_seed, seconds))

    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); mean ± sample std, in percent\n")
    print("| config | " + " | ".join(args.metrics) + " | seconds per run |")
    print("| --- |" + " --- |" * (len(args.metrics) + 1))
    for config, per_seed, seconds in rows:
        cells = []
        for name in args.metrics:
            values = [100 * m[name] for m in per_seed]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        timing = f"{statistics.mean(seconds):.0f}" if seconds else "(earlier runs)"
        print(f"| `{config}` | " + " | ".join(cells) + f" | {timing} |")


if __name__ == "__main__":
    main()
