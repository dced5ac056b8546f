"""Training curves from ``metrics.jsonl`` (see :mod:`detector.runtime.metrics_log` for the format).

Each line is ``{"iter": i, "train/loss": ..., "train/loss_cls": ..., "train/lr": ..., ...}`` for training
logs and ``{"iter": i, "val/AP": ..., ...}`` for evaluations. The figure has one panel for the loss terms
(``train/loss`` solid, each ``train/loss_*`` term dashed), one for the learning rate and, when any run has
evaluations, one for the evaluation APs (markers). Several runs are overlaid, one colour per run. A resumed
run appends to the same file, so an iteration may appear twice; the later record wins.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.analysis.plotting import COLOURS, new_figure, save_png
from detector.runtime.metrics_log import METRICS_FILENAME, read_metrics_jsonl

VAL_KEYS = ("AP", "AP50", "AP75", "APr", "APc", "APf")
LINE_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


@dataclass
class Run:
    name: str
    series: dict[str, tuple[list[int], list[float]]]  # key -> (iterations, values)

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.series if k.startswith(prefix))


def metrics_path(path: str | os.PathLike) -> Path:
    """A work dir (holding metrics.jsonl) or the metrics file itself."""
    path = Path(path)
    candidate = path / METRICS_FILENAME if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILENAME} here (give a work dir or the file itself)")
    return candidate


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """Read one run's metrics into per-key series sorted by iteration (numeric values only)."""
    file = metrics_path(path)
    by_key: dict[str, dict[int, float]] = {}
    for number, record in enumerate(read_metrics_jsonl(file), start=1):
        if "iter" not in record:
            raise ValueError(f"{file}: record {number} has no 'iter'")
        for key, value in record.items():
            if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                by_key.setdefault(key, {})[int(record["iter"])] = float(value)
    series = {key: (sorted(points), [points[i] for i in sorted(points)]) for key, points in by_key.items()}
    return Run(name or (file.parent.name or str(file)), series)


def plot_metrics(runs: Sequence[Run], out: str | os.PathLike) -> Path:
    """Loss terms, learning rate and (if present) evaluation APs vs iteration."""
    if not runs:
        raise ValueError("give at least one run")
    if not any(run.keys("train/loss") for run in runs):
        raise ValueError(f"no train/loss* values in {', '.join(run.name for run in runs)}")
    has_val = any(k.split("/", 1)[1] in VAL_KEYS for run in runs for k in run.keys("val/"))
    figure, axes = new_figure(3 if has_val else 2, width_per_panel=4.8, height=3.8)
    loss_axes, lr_axes = axes[0], axes[1]
    for index, run in enumerate(runs):
        colour = COLOURS[index % len(COLOURS)]
        terms = [k for k in run.keys("train/loss") if k != "train/loss"]
        if "train/loss" in run.series:
            loss_axes.plot(*run.series["train/loss"], color=colour, lw=2, label=f"{run.name}: loss")
        for t, key in enumerate(terms):
            loss_axes.plot(*run.series[key], color=colour, lw=1.2, ls=LINE_STYLES[t % len(LINE_STYLES)],
                           label=f"{run.name}: {key.split('/', 1)[1]}")
        if "train/lr" in run.series:
            lr_axes.plot(*run.series["train/lr"], color=colour, lw=1.5, label=run.name)  # as logged (sampled)
        if has_val:
            for v, name in enumerate(k for k in VAL_KEYS if f"val/{k}" in run.series):
                iters, values = run.series[f"val/{name}"]
                axes[2].plot(iters, values, color=colour, marker="os^vD<"[v % 6], ms=5, lw=1,
                             label=f"{run.name}: {name}")
                axes[2].annotate(f"{values[-1]:.3f}", (iters[-1], values[-1]), textcoords="offset points",
                                 xytext=(-4, 4), ha="right", fontsize=7, color=colour)
    loss_axes.set_title("training losses")
    loss_axes.set_yscale("log")
    lr_axes.set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if has_val:
        axes[2].set_title("evaluation")
        axes[2].set_ylabel("AP")
        axes[2].set_ylim(0, 1)
        axes[2].set_xlim(*loss_axes.get_xlim())  # one iteration axis for all panels
    return save_png(figure, out)
