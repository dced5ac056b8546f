"""The plain log lines of a training run, readable in a cluster's job log (no progress bar there).

Every ``runtime.log_interval`` iterations the trainer logs one line (console and ``<work_dir>/train.log``)::

    iter 40/700 | loss 1.234 (loss_cls 0.812, loss_box 0.422) | lr 0.0100 | grad_norm 3.21 |
    time 0.512 s/it, data 0.012 s | eta 0:05:38 | max_mem 812 MB

(one line). Losses are the step's, averaged over processes (the values metrics.jsonl records); times are
medians over the last ``log_interval`` iterations; the ETA is the remaining iterations times that median;
max_mem is the peak of CUDA memory allocated by tensors on a GPU, the process's peak resident set size on the CPU.
Evaluation results are logged in percent with one decimal, as ``tools/eval.py`` prints its table (the
``metrics.jsonl`` / ``--metrics-out`` files keep fractions).
"""

from __future__ import annotations

import datetime
import math
import sys

import torch

from detector.evaluation.report import HEADLINE_KEYS

__all__ = ["peak_memory_mb", "format_eta", "train_log_line", "metrics_log_line"]


def peak_memory_mb(device: torch.device) -> tuple[float, str] | None:
    """(peak MB, what was measured): CUDA memory allocated on ``device``, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda"
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (peak / 2**20 if sys.platform == "darwin" else peak / 2**10), "rss"


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def train_log_line(iteration: int, total: int, values: dict[str, float], device: torch.device) -> str:
    """The log line of ``iteration`` (see the module docstring) from the values logged to metrics.jsonl:
    the loss terms, ``loss`` (their sum), ``grad_norm``, ``lr``, ``iter_time``, ``data_time``, ``skipped_steps``."""
    terms = ", ".join(f"{key} {_number(value)}" for key, value in values.items() if key.startswith("loss_"))
    parts = [f"iter {iteration}/{total}", f"loss {_number(values['loss'])}" + (f" ({terms})" if terms else ""),
             f"lr {values['lr']:.4g}", f"grad_norm {_number(values['grad_norm'])}",
             f"time {values['iter_time']:.3f} s/it, data {values['data_time']:.3f} s",
             f"eta {format_eta((total - iteration) * values['iter_time'])}"]
    memory = peak_memory_mb(device)
    if memory is not None:
        parts.append(f"max_mem {memory[0]:.0f} MB" + (" (rss)" if memory[1] == "rss" else ""))
    if values.get("skipped_steps"):
        parts.append(f"skipped_steps {int(values['skipped_steps'])}")
    return " | ".join(parts)


def metrics_log_line(metrics: dict) -> str:
    """"AP 36.5, AP50 55.4, ..." in percent with one decimal (``-`` where there is no ground truth)."""
    keys = [key for key in HEADLINE_KEYS if key in metrics] or \
        [key for key, value in metrics.items() if isinstance(value, float)]

    def percent(value) -> str:
        return f"{100.0 * value:.1f}" if isinstance(value, float) and math.isfinite(value) and value >= 0 else "-"

    return ", ".join(f"{key} {percent(metrics[key])}" for key in keys) + " (percent)"
