"""Crash-safety check: kill or pre-empt a training run at random moments, over and over, and check its checkpoints.

    python scripts/kill_test.py --trials 30                                 # kill -9
    python scripts/kill_test.py --trials 20 --signal TERM --num-workers 2   # pre-emption (SLURM, Kubernetes)
    python scripts/kill_test.py --trials 6 --signal TERM --num-workers 2 --torchrun   # the same, 2 torchrun ranks

Every trial starts ``tools/train.py configs/quickstart.yaml --resume`` on a tiny synthetic run (64 px
images, ResNet-18, a checkpoint every iteration, so many kills land while a checkpoint is being written),
waits a random delay and sends the signal to its whole process group (the main process and its loader
workers, as a cluster does; with ``--torchrun``, ``torchrun --standalone --nproc_per_node 2`` runs it and the
signal goes to every process of the job, as ``scancel`` does: torchrun, each rank's process group (torchrun
starts every rank in a session of its own) and their loader workers). Then, for every signal:

* ``checkpoints/last.pt`` must load with ``torch.load(weights_only=True)`` and hold a state dict, or be
  absent if no checkpoint was written yet; every ``iter_*.pt`` must load too;
* the next trial resumes from it: its log must say so, at the iteration last.pt held, and the iteration never
  goes back;
* at the end, one more ``--resume`` run trains two more iterations and must finish (exit code 0).

With ``--signal TERM`` (or HUP, INT) the run must also stop by itself: exit code 0 (130 for INT), one
"stopped by ..." line and no traceback, last.pt holding the last iteration it logged (the step in flight
finished, none lost), and no process of the group left. A signal that lands before training starts (model and
data still loading, nothing to save yet) ends the process with the signal's default action; such trials are
counted apart. torchrun itself exits 1 after a signal, with its own ``SignalException`` traceback (its frames
only), once its ranks have stopped; that is what a torchrun trial expects, and no rank may need its SIGKILL.

Prints the number of trials, corrupt files (must be 0), kills that interrupted a checkpoint write (KILL) or
the shutdown times (TERM), and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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


def train_command(work_dir: Path, data_root: Path, max_iters: int, num_workers: int = 0,
                  torchrun: bool = False) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] \
        if torchrun else [sys.executable]
    return [*launcher, str(ROOT / "tools" / "train.py"), str(CONFIG), "--work-dir", str(work_dir), "--resume",
            "--no-progress", "--opts", *tiny_opts(data_root, max_iters), f"data.num_workers={num_workers}"]


def job_process_groups(pid: int) -> set[int]:
    """The process groups of ``pid`` and of every process below it (Linux: read from /proc)."""
    groups, pending = {pid}, [pid]
    while pending:
        parent = pending.pop()
        for thread in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            try:
                children = [int(child) for child in open(f"/proc/{parent}/task/{thread}/children").read().split()]
                groups.update(os.getpgid(child) for child in children)
            except OSError:  # gone meanwhile
                continue
            pending += children
    return groups


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


def last_logged_iteration(work_dir: Path) -> int | None:
    """The last training iteration in metrics.jsonl (a half-written last line is skipped)."""
    path = work_dir / "metrics.jsonl"
    last = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "train/loss" in record:
                last = int(record["iter"])
    return last


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_groups(groups: set[int], signum: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)


def signal_trial(proc: subprocess.Popen, signum: int, delay: float, work_dir: Path, log_path: Path,
                 every_group: bool = False) -> dict:
    """Wait ``delay`` s, signal the run's process group (with ``every_group``, those of all its processes),
    wait for it to end; returns what happened: for a graceful stop the seconds from the signal to its
    "stopped by" line (last.pt written) and to the exit."""
    try:
        proc.wait(timeout=delay)
        return {"signalled": False}
    except subprocess.TimeoutExpired:
        pass
    groups = job_process_groups(proc.pid) if every_group else {proc.pid}
    sent = time.monotonic()
    kill_groups(groups, signum)
    if signum == signal.SIGKILL:
        proc.wait()
        return {"signalled": True}
    outcome = {"signalled": True}
    while proc.poll() is None and time.monotonic() - sent < 300:
        if "checkpointed" not in outcome and "stopped by" in log_path.read_text():
            outcome["checkpointed"] = time.monotonic() - sent
        time.sleep(0.02)
    if proc.poll() is None:
        kill_groups(groups, signal.SIGKILL)
        proc.wait()
        return {**outcome, "hung": True}
    outcome["shutdown"] = time.monotonic() - sent
    time.sleep(0.5)  # workers notice their parent's exit within a second
    outcome["survivors"] = any(group_alive(group) for group in groups)
    if outcome["survivors"]:
        kill_groups(groups, signal.SIGKILL)
    return {**outcome, "logged": last_logged_iteration(work_dir)}


def foreign_traceback(log_text: str, torchrun: bool) -> bool:
    """A traceback other than torchrun's own report of the signal it received."""
    if not torchrun or log_text.count("Traceback") != 1:
        return "Traceback" in log_text
    traceback = log_text[log_text.index("Traceback"):]
    own_frames = str(ROOT / "detector") in traceback or str(ROOT / "tools") in traceback
    return own_frames or "SignalException" not in traceback


def check_graceful(trial: int, signum: int, outcome: dict, code: int, log_text: str,
                   iteration: int | None, torchrun: bool = False) -> tuple[list[str], bool]:
    """Failures of a graceful stop, and whether the signal came before training started (nothing to save)."""
    expected = 1 if torchrun else 130 if signum == signal.SIGINT else 0
    if code in ((-signum, 1) if torchrun else (-signum,)) and not re.search(r"training \d+ iterations", log_text):
        return [], True  # still starting up: the default action of the signal, nothing was trained
    failures = []
    if outcome.get("hung"):
        failures.append(f"trial {trial}: still running 300 s after the signal")
    if code != expected:
        failures.append(f"trial {trial}: exit code {code}, expected {expected}")
    if foreign_traceback(log_text, torchrun):
        failures.append(f"trial {trial}: a traceback in the log")
    if "forcefully exiting" in log_text:
        failures.append(f"trial {trial}: torchrun had to SIGKILL a rank")
    if log_text.count("stopped by") != 1:
        failures.append(f"trial {trial}: {log_text.count('stopped by')} 'stopped by' lines, expected 1")
    if outcome.get("survivors"):
        failures.append(f"trial {trial}: processes of the run outlived it")
    if outcome.get("logged") is not None and outcome["logged"] != iteration:
        failures.append(f"trial {trial}: iteration {outcome['logged']} logged, last.pt holds {iteration}")
    return failures, False


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "HUP", "INT"],
                        help="sent to the run's process group (default KILL)")
    parser.add_argument("--num-workers", type=int, default=0, help="data.num_workers of the runs")
    parser.add_argument("--torchrun", action="store_true",
                        help="2 ranks under torchrun --standalone; the signal goes to every process of the job")
    parser.add_argument("--min-delay", type=float, default=1.0, help="seconds after start, at least")
    parser.add_argument("--max-delay", type=float, default=12.0, help="seconds after start, at most")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random delays")
    parser.add_argument("--work-dir", help="where the run lives (default: a temporary folder, removed afterwards)")
    return parser.parse_args(argv)


def run_trials(args, base: Path, env: dict) -> tuple[list[str], int, dict]:
    """Every trial; returns (failures, corrupt files, counts and shutdown times)."""
    work_dir, data_root = base / "run", base / "data"
    signum = getattr(signal, f"SIG{args.signal}")
    rng = random.Random(args.seed)
    corrupt_files, failures = 0, []
    stats = {"writes_hit": 0, "absent": 0, "before_start": 0, "shutdowns": [], "checkpointed": []}
    previous = None  # iteration in last.pt after the previous kill
    for trial in range(1, args.trials + 1):
        log_path = base / f"trial_{trial:03d}.log"
        stale = temporaries(work_dir / "checkpoints")  # left by the previous kill; removed at start-up
        delay = rng.uniform(args.min_delay, args.max_delay)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(train_command(work_dir, data_root, NEVER, args.num_workers, args.torchrun),
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            outcome = signal_trial(proc, signum, delay, work_dir, log_path, every_group=args.torchrun)
        if not outcome["signalled"]:
            failures.append(f"trial {trial}: the run exited by itself with code {proc.returncode} (see {log_path})")
        iteration, corrupt = check_checkpoints(work_dir / "checkpoints")
        in_flight = bool(temporaries(work_dir / "checkpoints") - stale)  # this kill interrupted a write
        corrupt_files += len(corrupt)
        failures += [f"trial {trial}: corrupt {name}" for name in corrupt]
        log_text = log_path.read_text()
        if signum != signal.SIGKILL and outcome["signalled"]:
            graceful_failures, before_start = check_graceful(trial, signum, outcome, proc.returncode, log_text,
                                                             iteration, args.torchrun)
            failures += graceful_failures
            stats["before_start"] += before_start
            if "shutdown" in outcome and not before_start:
                stats["shutdowns"].append(outcome["shutdown"])
                stats["checkpointed"].append(outcome.get("checkpointed", outcome["shutdown"]))
        stats["writes_hit"] += in_flight
        stats["absent"] += iteration is None
        resumed = re.search(r"resumed from \S+ at iteration (\d+)", log_text)
        if previous is not None and resumed and int(resumed.group(1)) != previous:
            failures.append(f"trial {trial}: resumed at iteration {resumed.group(1)}, last.pt held {previous}")
        if previous is not None and (iteration is None or iteration < previous):
            failures.append(f"trial {trial}: last.pt went back from iteration {previous} to {iteration}")
        shutdown = (f", stopped {outcome.get('checkpointed', float('nan')):.2f} s and exited "
                    f"{outcome['shutdown']:.2f} s after the signal" if "shutdown" in outcome else "")
        print(f"trial {trial:3d}: SIG{args.signal} after {delay:5.2f} s, last.pt "
              f"{'absent' if iteration is None else f'at iteration {iteration}'}"
              f"{', resumed from ' + resumed.group(1) if resumed else ''}{shutdown}"
              f"{', a checkpoint write was in flight' if in_flight else ''}", flush=True)
        previous = iteration if iteration is not None else previous
    stats["last"] = previous
    return failures, corrupt_files, stats


def main(argv=None) -> int:
    args = parse_args(argv)
    base = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="kill_test_"))
    work_dir, data_root = base / "run", base / "data"
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        failures, corrupt_files, stats = run_trials(args, base, env)
        start = stats["last"] or 0
        final = subprocess.run(train_command(work_dir, data_root, start + 2, args.num_workers, args.torchrun),
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
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

    target = "every process group of a 2-rank torchrun job" if args.torchrun else "the process group"
    print(f"signal: SIG{args.signal} to {target}, data.num_workers={args.num_workers}; trials: "
          f"{args.trials}, corrupt files: {corrupt_files}, kills during a checkpoint write: {stats['writes_hit']}, "
          f"kills before the first checkpoint: {stats['absent']}")
    if args.signal != "KILL":
        def spread(times: list[float]) -> str:
            return f"median {statistics.median(times):.2f} s, max {max(times):.2f} s" if times else "none measured"

        print(f"graceful stops: {len(stats['shutdowns'])} (signal to the 'stopped by' line, last.pt written: "
              f"{spread(stats['checkpointed'])}; to the exit: {spread(stats['shutdowns'])}), signals before "
              f"training started: {stats['before_start']}, failures: {len(failures)}")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures or corrupt_files else 0


if __name__ == "__main__":
    sys.exit(main())
