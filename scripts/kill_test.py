"""Crash-safety check: kill -9 a training run at random moments, over and over, and check its checkpoints.

    python scripts/kill_test.py --trials 30

Every trial starts ``tools/train.py configs/quickstart.yaml --resume`` on a tiny synthetic run (64 px
images, ResNet-18, a checkpoint every iteration, so many kills land while a checkpoint is being written),
waits a random delay and sends SIGKILL to its process group. Then:

* ``checkpoints/last.pt`` must load with ``torch.load(weights_only=True)`` and hold a state dict, or be
  absent if no checkpoint was written yet; every ``iter_*.pt`` must load too;
* the next trial resumes from it: its log must say so, at the iteration last.pt held, and the iteration never
  goes back;
* at the end, one more ``--resume`` run trains two more iterations and must finish (exit code 0).

Prints the number of trials, corrupt files (must be 0), kills that interrupted a checkpoint write, and exits
non-zero on any failure.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"
NEVER = 1_000_000  # max_iters of the killed runs: they never finish on their own


def tiny_opts(data_root: Path, max_iters: int) -> list[str]:
    r = data_root
    return [f"data.synthetic.root={r}", "data.synthetic.num_train=16", "data.synthetic.num_val=4",
            "data.synthetic.image_size=64", "data.synthetic.min_object_size=8", "data.synthetic.max_object_size=40",
            "data.synthetic.max_objects=3",
            f"data.train.ann_file={r}/annotations/instances_train.json", f"data.train.img_dir={r}/train",
            f"data.val.ann_file={r}/annotations/instances_val.json", f"data.val.img_dir={r}/val",
            "data.min_size=[48,64]", "data.max_size=64", "data.batch_size=4", "data.num_workers=0",
            "model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32",
            "schedule.epochs=null", f"schedule.iters={NEVER}", "schedule.steps=[]", "schedule.warmup_iters=2",
            "schedule.lr=0.005",
            f"schedule.max_iters={max_iters}", 'runtime.amp="off"', "runtime.log_interval=1",
            "runtime.checkpoint_interval=1", "runtime.keep_checkpoints=2", "runtime.eval_at_end=false"]


def train_command(work_dir: Path, data_root: Path, max_iters: int) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "train.py"), str(CONFIG), "--work-dir", str(work_dir), "--resume",
            "--no-progress", "--opts", *tiny_opts(data_root, max_iters)]


def temporaries(directory: Path) -> set[str]:
    """Names of the temporary files of checkpoint writes in ``directory``."""
    return {entry.name for entry in directory.iterdir() if entry.name.endswith(".tmp")} if directory.is_dir() \
        else set()


def check_checkpoints(directory: Path) -> tuple[int | None, list[str]]:
    """(iteration in last.pt, or None if absent; names of the files that do not load)."""
    if not directory.is_dir():
        return None, []
    corrupt, iteration = [], None
    for path in sorted(directory.glob("*.pt")):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not {"model", "optimizer", "iteration"} <= state.keys():
                raise ValueError("not a training state")
        except Exception as error:  # anything that does not load is a failure of this test
            corrupt.append(f"{path.name}: {type(error).__name__}: {error}")
            continue
        if path.name == "last.pt":
            iteration = int(state["iteration"])
    return iteration, corrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--min-delay", type=float, default=1.0, help="seconds after start, at least")
    parser.add_argument("--max-delay", type=float, default=12.0, help="seconds after start, at most")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random delays")
    parser.add_argument("--work-dir", help="where the run lives (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)

    base = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="kill_test_"))
    work_dir, data_root = base / "run", base / "data"
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rng = random.Random(args.seed)
    corrupt_files, failures, writes_hit, absent = 0, [], 0, 0
    previous = None  # iteration in last.pt after the previous kill
    try:
        for trial in range(1, args.trials + 1):
            log_path = base / f"trial_{trial:03d}.log"
            stale = temporaries(work_dir / "checkpoints")  # left by the previous kill; removed at start-up
            delay = rng.uniform(args.min_delay, args.max_delay)
            with open(log_path, "w") as log:
                proc = subprocess.Popen(train_command(work_dir, data_root, NEVER), cwd=ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the process group of the run started above
                    proc.wait()
            if proc.returncode != -signal.SIGKILL:
                failures.append(f"trial {trial}: the run exited by itself with code {proc.returncode} "
                                f"(see {log_path})")
            iteration, corrupt = check_checkpoints(work_dir / "checkpoints")
            in_flight = bool(temporaries(work_dir / "checkpoints") - stale)  # this kill interrupted a write
            corrupt_files += len(corrupt)
            failures += [f"trial {trial}: corrupt {name}" for name in corrupt]
            writes_hit += in_flight
            absent += iteration is None
            log_text = log_path.read_text()
            resumed = re.search(r"resumed from \S+ at iteration (\d+)", log_text)
            if previous is not None and resumed and int(resumed.group(1)) != previous:
                failures.append(f"trial {trial}: resumed at iteration {resumed.group(1)}, last.pt held {previous}")
            if previous is not None and (iteration is None or iteration < previous):
                failures.append(f"trial {trial}: last.pt went back from iteration {previous} to {iteration}")
            print(f"trial {trial:3d}: killed after {delay:5.2f} s, last.pt "
                  f"{'absent' if iteration is None else f'at iteration {iteration}'}"
                  f"{', resumed from ' + resumed.group(1) if resumed else ''}"
                  f"{', a checkpoint write was in flight' if in_flight else ''}", flush=True)
            previous = iteration if iteration is not None else previous

        start = previous or 0
        final = subprocess.run(train_command(work_dir, data_root, start + 2), cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=900)
        iteration, corrupt = check_checkpoints(work_dir / "checkpoints")
        corrupt_files += len(corrupt)
        if final.returncode != 0 or iteration != start + 2:
            failures.append(f"final resumed run: exit code {final.returncode}, last.pt at iteration {iteration}, "
                            f"expected {start + 2}:\n{final.stderr[-2000:]}")
        else:
            print(f"final run: resumed at iteration {start}, finished at {iteration}")
    finally:
        if not args.work_dir:
            shutil.rmtree(base, ignore_errors=True)

    print(f"trials: {args.trials}, corrupt files: {corrupt_files}, kills during a checkpoint write: {writes_hit}, "
          f"kills before the first checkpoint: {absent}")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures or corrupt_files else 0


if __name__ == "__main__":
    sys.exit(main())
