"""Rerun a paper's table, row by row, and print the paper's numbers beside the measured ones.

    python scripts/reproduce.py retinanet_1b --dry-run                 # the commands, one per row
    python scripts/reproduce.py atss_4 --launcher torchrun --gpus 8    # full scale (COCO under data/coco)
    python scripts/reproduce.py all --mini                             # every table on the synthetic data, CPU

Tables (scripts/reproduce_tables.py): retinanet_1a (CE alpha sweep), retinanet_1b (gamma sweep),
retinanet_1c (anchor scales x ratios), atss_4 (k sweep), gfl (FL / QFL, DFL, reg_max), efl (FL vs EFL on
LVIS v1). Each row is configs/reproduce/<table>/<row>.yaml and trains through tools/train.py with
--work-dir <work-root>/<table>/<row> (``<row>_s<seed>`` per seed with --seeds): ``torchrun --nproc_per_node
N tools/train.py ...`` (--launcher torchrun, the default at full scale) or ``python tools/train.py ...``
(--launcher local, the default with --mini). A row whose work dir holds reproduce.json (written after its
final evaluation) is skipped; a row with checkpoints/last.pt but no reproduce.json is resumed (--resume).
A failed row is reported in the table and the others still run (the exit code is then 1).

--mini runs the same rows on the synthetic benchmark sized for a 2-core CPU: the table's overlay
(configs/reproduce/_base_/mini_*.yaml: ResNet-18 from scratch, narrow heads, 160 px, 160 iterations (RetinaNet
tables 320, EFL 400), bf16) is merged over each row by a generated config, <work-root>/<table>/mini_configs/<row>.yaml, whose
``_base_`` lists the row and then the overlay. The overlay sets none of the keys a table varies, and the
driver checks that each generated config keeps its row's varied values. Mini figures are on synthetic data:
compare their trend across rows with the paper's, not their level.

The table (AP in percent, paper / measured / difference, the wall time each row took and its CPU time) is
printed and written to <work-root>/<table>/table.md. Per-row logs: <work dir>/train.log.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_configs import final_metrics  # noqa: E402
from reproduce_tables import ROOT, TABLES, Row, Table  # noqa: E402

DONE_FILE = "reproduce.json"        # metrics and seconds of a finished row
PARTIAL_FILE = "reproduce_partial.json"  # seconds spent by earlier, unfinished attempts
LOG_FILE = "train.log"


@dataclass
class Job:
    table: Table
    row: Row
    seed: int | None
    work_dir: Path
    config: Path


@dataclass
class Result:
    row: Row
    seed: int | None
    status: str                  # "done" (skipped), "ran", "resumed", "failed"
    metrics: dict | None = None  # fractions, as the evaluators report them
    seconds: float | None = None
    message: str = ""
    cpu_seconds: float | None = None  # user + system of the training processes (and their loader workers)


# ------------------------------------------------------------------------------------------------- jobs
def show_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (commands run from there), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(Path(path).resolve())


def get_by_dotted(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


def write_mini_config(table: Table, row: Row, path: Path) -> Path:
    """A config whose ``_base_`` is the row, then the table's mini overlay; fails when the overlay would
    change a value the table varies."""
    from detector.config import config_to_dict, load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {table.name} / {row.name} at mini scale: the row, then the overlay (written by "
                    f"scripts/reproduce.py --mini)\n_base_:\n  - {table.config(row)}\n  - {table.mini_config}\n")
    full, mini = (config_to_dict(load_config(p)) for p in (table.config(row), path))
    for key in table.varied:
        if get_by_dotted(full, key) != get_by_dotted(mini, key):
            raise ValueError(f"{table.mini_config}: the mini overlay changes {key} of {table.config(row)} "
                             f"({get_by_dotted(full, key)!r} -> {get_by_dotted(mini, key)!r})")
    return path


def make_jobs(table: Table, work_root: Path, mini: bool, seeds: list[int] | None,
              rows: list[str] | None = None) -> list[Job]:
    selected = [table.row(name) for name in rows] if rows else list(table.rows)
    jobs = []
    for row in selected:
        config = table.config(row)
        if mini:
            config = write_mini_config(table, row, work_root / table.name / "mini_configs" / f"{row.name}.yaml")
        for seed in (seeds or [None]):
            name = row.name if seed is None else f"{row.name}_s{seed}"
            jobs.append(Job(table, row, seed, work_root / table.name / name, config))
    return jobs


def row_state(work_dir: Path) -> str:
    """"done" (reproduce.json written), "resume" (last.pt but unfinished) or "new"."""
    if (work_dir / DONE_FILE).is_file():
        return "done"
    if (work_dir / "checkpoints" / "last.pt").is_file():
        return "resume"
    return "new"


def launcher_prefix(launcher: str, gpus: int) -> list[str]:
    if launcher == "local":
        return [sys.executable]
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun) if torchrun.is_file() else "torchrun", "--nproc_per_node", str(gpus)]


def build_command(job: Job, launcher: str, gpus: int, resume: bool, opts: list[str]) -> list[str]:
    overrides = ([f"runtime.seed={job.seed}"] if job.seed is not None else []) + list(opts)
    return [*launcher_prefix(launcher, gpus), "tools/train.py", show_path(job.config),
            "--work-dir", show_path(job.work_dir), "--no-progress",
            *(["--resume"] if resume else []), *(["--opts", *overrides] if overrides else [])]


# ------------------------------------------------------------------------------------------------- runs
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_job(job: Job, command: list[str]) -> Result:
    """Run one row's training, then read its final metrics; a failure becomes a failed Result."""
    job.work_dir.mkdir(parents=True, exist_ok=True)
    resumed = "--resume" in command
    partial = _read_json(job.work_dir / PARTIAL_FILE)
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    try:
        with open(job.work_dir / LOG_FILE, "a") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    except OSError as err:
        return Result(job.row, job.seed, "failed", message=f"could not start: {err}")
    seconds = partial.get("seconds", 0.0) + time.perf_counter() - start
    cpu_seconds = partial.get("cpu_seconds", 0.0) + _children_cpu_seconds() - cpu_start
    metrics = final_metrics(job.work_dir) if code == 0 else None
    if metrics is None:
        (job.work_dir / PARTIAL_FILE).write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds}))
        why = f"exit {code}" if code else "no final evaluation"
        return Result(job.row, job.seed, "failed", seconds=seconds, cpu_seconds=cpu_seconds,
                      message=f"{why}, see {show_path(job.work_dir / LOG_FILE)}")
    record = {"metrics": metrics, "seconds": seconds, "cpu_seconds": cpu_seconds, "resumed": resumed,
              "command": command}
    (job.work_dir / DONE_FILE).write_text(json.dumps(record, indent=1))
    (job.work_dir / PARTIAL_FILE).unlink(missing_ok=True)
    return Result(job.row, job.seed, "resumed" if resumed else "ran", metrics, seconds, cpu_seconds=cpu_seconds)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children, with their reaped descendants
    return usage.ru_utime + usage.ru_stime


def done_result(job: Job) -> Result:
    record = _read_json(job.work_dir / DONE_FILE)
    return Result(job.row, job.seed, "done", record.get("metrics"), record.get("seconds"),
                  cpu_seconds=record.get("cpu_seconds"))


# ----------------------------------------------------------------------------------------------- tables
def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _measured(results: list[Result], metric: str) -> tuple[str, float | None]:
    values = [100 * r.metrics[metric] for r in results if r.metrics and metric in r.metrics]
    if len(values) < len(results) or not values:
        failed = [r.message for r in results if r.status == "failed"]
        return (f"failed ({failed[0]})" if failed else "-"), None
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.1f}", mean
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}", mean


def format_table(table: Table, results: dict[str, list[Result]], mini: bool = False) -> str:
    """Markdown: row, setting, then per metric paper / measured / difference (percent), then time.

    ``results`` maps row names to their runs (one per seed); rows missing from it are left out."""
    scale = "mini (synthetic data, CPU)" if mini else "full scale"
    lines = [f"### {table.title} — {scale}", "", f"Paper: {table.source}.", *[f"{n}." for n in table.notes]]
    if mini:
        lines.append("Measured on the synthetic benchmark: compare the trend across rows, not the level.")
    lines.append("")
    header = ["row", "setting"]
    for metric in table.metrics:
        header += [f"paper {metric}", f"measured {metric}", f"Δ {metric}"]
    header += ["time", "CPU time"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    total = total_cpu = 0.0
    for row in table.rows:
        if row.name not in results:
            continue
        runs = results[row.name]
        cells = [f"`{row.name}`", row.setting]
        for metric in table.metrics:
            paper = row.paper.get(metric)
            measured, value = _measured(runs, metric)
            diff = f"{value - paper:+.1f}" if paper is not None and value is not None else "-"
            cells += ["unconfirmed" if paper is None else f"{paper:.1f}", measured, diff]
        seconds = [r.seconds for r in runs if r.seconds is not None]
        total += sum(seconds)
        note = " (earlier run)" if all(r.status == "done" for r in runs) else \
            " (resumed)" if any(r.status == "resumed" for r in runs) else ""
        cells.append((format_duration(sum(seconds)) if seconds else "-") + note)
        cpu = [r.cpu_seconds for r in runs if r.cpu_seconds is not None]
        total_cpu += sum(cpu)
        cells.append(format_duration(sum(cpu)) if cpu else "-")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({r.seed for runs in results.values() for r in runs if r.seed is not None})
    if seeds:
        lines += ["", f"Seeds {', '.join(map(str, seeds))}: mean ± sample std; time summed over seeds."]
    lines += ["", f"Total time: {format_duration(total)} (CPU time {format_duration(total_cpu)}: user + system "
                  "seconds of the training processes, summed over their threads and loader workers)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", metavar="TABLE", choices=[*TABLES, "all"],
                        help=f"one or more of: {', '.join(TABLES)}, all")
    parser.add_argument("--mini", action="store_true", help="the synthetic benchmark on the CPU")
    parser.add_argument("--launcher", choices=["torchrun", "local"],
                        help="torchrun (default at full scale) or local (python; default with --mini)")
    parser.add_argument("--gpus", type=int, default=8, help="processes per node with torchrun (default 8)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--work-root", help="default work_dirs/reproduce (or work_dirs/reproduce_mini)")
    parser.add_argument("--seeds", nargs="+", type=int, help="run every row once per seed (runtime.seed)")
    parser.add_argument("--rows", nargs="+", help="only these rows (with a single TABLE)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every row (not of a key the table varies)")
    args = parser.parse_args(argv)
    if "all" in args.tables:
        args.tables = list(TABLES)
    if args.rows and len(args.tables) != 1:
        parser.error("--rows needs exactly one TABLE")
    args.launcher = args.launcher or ("local" if args.mini else "torchrun")
    args.work_root = Path(args.work_root or ("work_dirs/reproduce_mini" if args.mini else "work_dirs/reproduce"))
    return args


def run_table(table: Table, args: argparse.Namespace) -> bool:
    """Run (or list) one table's rows; returns False when a row failed."""
    for opt in args.opts:
        key = opt.split("=", 1)[0].strip()
        if any(key == v or v.startswith(key + ".") for v in table.varied):
            raise SystemExit(f"error: --opts {opt} would override {key}, which table {table.name} varies")
    try:
        jobs = make_jobs(table, args.work_root.resolve(), args.mini, args.seeds, args.rows)
    except KeyError as err:  # an unknown --rows name
        raise SystemExit(f"error: {err.args[0]}") from None
    results: dict[str, list[Result]] = {}
    for job in jobs:
        state = row_state(job.work_dir)
        command = build_command(job, args.launcher, args.gpus, state == "resume", args.opts)
        if args.dry_run:
            print(("# done, skipped: " if state == "done" else "") + shlex.join(command))
            continue
        label = f"[{table.name}] {job.work_dir.name}"
        if state == "done":
            result = done_result(job)
            print(f"{label}: done earlier, skipped", file=sys.stderr, flush=True)
        else:
            print(f"{label}: {'resuming' if state == 'resume' else 'running'}: {shlex.join(command)}",
                  file=sys.stderr, flush=True)
            result = run_job(job, command)
            summary = result.message if result.status == "failed" else ", ".join(
                f"{m} {100 * result.metrics[m]:.1f}" for m in table.metrics if m in result.metrics)
            print(f"{label}: {result.status} in {format_duration(result.seconds)} "
                  f"(CPU {format_duration(result.cpu_seconds)}): {summary}",
                  file=sys.stderr, flush=True)
        results.setdefault(job.row.name, []).append(result)
    if args.dry_run:
        return True
    text = format_table(table, results, mini=args.mini)
    out = args.work_root / table.name / "table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, flush=True)
    return all(r.status != "failed" for runs in results.values() for r in runs)


def main(argv=None) -> int:
    args = parse_args(argv)
    ok = True
    for name in args.tables:
        if args.dry_run:
            print(f"# {name}{' (mini)' if args.mini else ''}")
        ok = run_table(TABLES[name], args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
