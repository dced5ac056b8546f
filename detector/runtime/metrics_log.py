"""Training metrics: TensorBoard scalars, images and PR curves + a ``metrics.jsonl`` file, and windowed meters.

``metrics.jsonl`` holds one JSON object per :meth:`MetricsLogger.log` call, e.g.
``{"iter": 20, "train/loss_cls": 1.13, "train/loss_bbox": 0.52, "train/lr": 0.00401}``. Each line is written
and flushed at once, so a run killed at any moment keeps everything it logged (at worst a last, half-written
line, which :func:`read_metrics_jsonl` skips). Non-finite floats are written as ``NaN`` / ``Infinity``
(Python's ``json`` convention), because a diverging loss is exactly what one wants to see in the log.

:class:`SmoothedValue` and :class:`MeterGroup` keep windowed medians / averages of losses and iteration
times, for the trainer's tqdm postfix and ETA.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.runtime.distributed import is_main_process

__all__ = ["MetricsLogger", "read_metrics_jsonl", "SmoothedValue", "MeterGroup"]

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"


def _to_python_scalar(key: str, value: Any) -> int | float | str:
    """Convert a tensor / NumPy / Python scalar to a JSON-serialisable Python value."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {key!r} has shape {tuple(value.shape)}, expected a scalar")
        value = value.item()
    elif hasattr(value, "item") and callable(value.item):  # NumPy scalar or 0-d array
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    raise TypeError(f"metric {key!r} is a {type(value).__name__}; expected a number or a string")


class MetricsLogger:
    """Write scalars to TensorBoard (``work_dir/<tensorboard_subdir>``) and ``work_dir/metrics.jsonl``.

    Only the main process writes: on other ranks (or with ``enabled=False``) the logger creates no file and
    :meth:`log` does nothing, so the trainer can call it unconditionally.

    Args:
        work_dir: the run directory (created if missing).
        enabled: set False to disable logging altogether.
        tensorboard_subdir: sub-directory for the event files (``None`` writes them into ``work_dir``).
            If the ``tensorboard`` package is missing, a warning is logged and only the JSON file is written.
        jsonl / tensorboard: write ``metrics.jsonl`` / the TensorBoard event files (each tracker of
            :mod:`detector.engine.trackers` writes one of them).
    """

    def __init__(self, work_dir: str | os.PathLike, enabled: bool = True, *,
                 tensorboard_subdir: str | None = "tb", jsonl: bool = True, tensorboard: bool = True) -> None:
        self.work_dir = Path(work_dir)
        self.enabled = bool(enabled) and is_main_process()
        self.metrics_path = self.work_dir / METRICS_FILENAME
        self.tensorboard_dir = self.work_dir / tensorboard_subdir if tensorboard_subdir else self.work_dir
        self._file = None
        self._writer = None
        if not self.enabled:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if jsonl:  # line-buffered append: resumed runs continue the same file
            self._file = open(self.metrics_path, "a", encoding="utf-8", buffering=1)
        if not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            logger.warning("TensorBoard logging disabled (%s); writing %s only", error, self.metrics_path)
        else:
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str | None = "train") -> None:
        """Record ``metrics`` at iteration ``step``.

        Keys become ``f"{prefix}/{key}"`` (unchanged when ``prefix`` is empty or ``None``). Values may be
        Python / NumPy scalars or one-element tensors (converted with ``.item()``); strings go to the JSON
        file only. Writes one JSON line ``{"iter": step, ...}`` and flushes both outputs.
        """
        if self._file is None and self._writer is None:
            return
        record: dict[str, Any] = {"iter": int(step)}
        for key, value in metrics.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            record[name] = _to_python_scalar(name, value)
        try:
            if self._file is not None:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()
        except OSError as error:  # a full disk: keep training (the next checkpoint save says so), stop this file
            logger.warning("cannot write %s (%s); no further metrics are written to it in this run",
                           self.metrics_path, error)
            self._stop_file()
        if self._writer is not None:
            for name, value in record.items():
                if name != "iter" and not isinstance(value, str):
                    self._writer.add_scalar(name, value, global_step=int(step))
            self._writer.flush()

    @property
    def has_tensorboard(self) -> bool:
        """Whether TensorBoard event files are written (main process, ``tensorboard`` installed)."""
        return self._writer is not None

    def log_images(self, step: int, images: Mapping[str, torch.Tensor], prefix: str = "val_images") -> None:
        """Add uint8 RGB images (3, H, W) to TensorBoard as ``f"{prefix}/{name}"`` (no-op without TensorBoard)."""
        if self._writer is None or not images:
            return
        for name, image in images.items():
            self._writer.add_image(f"{prefix}/{name}", image, global_step=int(step), dataformats="CHW")
        self._writer.flush()

    def log_pr_curves(self, step: int, curves: Mapping[str, Sequence[float] | None], prefix: str = "val_pr") -> None:
        """Add precision-recall curves to TensorBoard as ``f"{prefix}/{name}"`` (no-op without TensorBoard).

        Each curve lists the precision at evenly spaced recall points ``0, 1/(R-1), ..., 1`` (COCO's 101
        points). It goes through ``add_pr_curve_raw``, whose TP / FP / TN / FN count rows are zeros: COCO's
        interpolated curve has no counts per point. A curve that is None or holds a negative value (COCO's -1:
        a class without ground truth) is skipped.
        """
        if self._writer is None or not curves:
            return
        for name, precision in curves.items():
            if precision is None or len(precision) < 2 or min(precision) < 0:
                continue
            precision_np = np.asarray(precision, dtype=np.float64)  # (R,)
            zeros = np.zeros(len(precision_np), dtype=np.int64)  # (R,)
            self._writer.add_pr_curve_raw(f"{prefix}/{name}", zeros, zeros, zeros, zeros, precision_np,
                                          np.linspace(0.0, 1.0, len(precision_np)), global_step=int(step),
                                          num_thresholds=len(precision_np))
        self._writer.flush()

    def _stop_file(self) -> None:
        file, self._file = self._file, None  # a half-written line stays the last one, which readers skip
        try:
            file.close()
        except OSError:
            pass

    def close(self) -> None:
        """Flush and close the outputs (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._stop_file()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
    """Parse a ``metrics.jsonl`` file into a list of dicts, in file order.

    Blank lines are ignored, and so is a malformed *last* line (the partial write of a killed run);
    a malformed line elsewhere raises ``ValueError`` naming the file and line number.
    """
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: invalid JSON line: {error}") from error
    return records


class SmoothedValue:
    """A series of values with a sliding window (median / average) and global statistics.

    Args:
        window_size: number of most recent values used by :attr:`median` and :attr:`avg`.
    """

    def __init__(self, window_size: int = 20) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self._window: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        """Add ``value`` (counted ``n`` times in the global average; once in the window)."""
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        self._window.append(value)
        self.total += value * n
        self.count += n

    @property
    def latest(self) -> float:
        return self._window[-1] if self._window else math.nan

    @property
    def median(self) -> float:
        return statistics.median(self._window) if self._window else math.nan

    @property
    def avg(self) -> float:
        return sum(self._window) / len(self._window) if self._window else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan

    def __repr__(self) -> str:
        return f"SmoothedValue(median={self.median:.4g}, global_avg={self.global_avg:.4g})"


class MeterGroup:
    """Named :class:`SmoothedValue` meters, created on first update.

    >>> meters = MeterGroup(window_size=20)
    >>> meters.update(loss=0.9, loss_cls=0.6, iter_time=0.31)
    >>> meters.postfix()  # for tqdm's set_postfix
    {'loss': '0.9', 'loss_cls': '0.6', 'iter_time': '0.31'}
    """

    def __init__(self, window_size: int = 20) -> None:
        self.window_size = window_size
        self.meters: dict[str, SmoothedValue] = {}

    def update(self, values: Mapping[str, float] | None = None, **kwargs: float) -> None:
        """Add one value per name, from a mapping and/or keyword arguments (tensors are converted)."""
        for name, value in {**(values or {}), **kwargs}.items():
            if name not in self.meters:
                self.meters[name] = SmoothedValue(self.window_size)
            self.meters[name].update(value)

    def __getitem__(self, name: str) -> SmoothedValue:
        return self.meters[name]

    def __contains__(self, name: str) -> bool:
        return name in self.meters

    def medians(self) -> dict[str, float]:
        """Windowed median of every meter."""
        return {name: meter.median for name, meter in self.meters.items()}

    def averages(self) -> dict[str, float]:
        """Windowed average of every meter."""
        return {name: meter.avg for name, meter in self.meters.items()}

    def postfix(self, fmt: str = ".4g") -> dict[str, str]:
        """Windowed medians formatted as strings, ready for ``tqdm.set_postfix(**...)``."""
        return {name: format(meter.median, fmt) for name, meter in self.meters.items()}

    def eta_seconds(self, remaining_iters: int, time_key: str = "iter_time") -> float:
        """Estimated seconds left: ``remaining_iters`` times the windowed median of ``time_key``."""
        if time_key not in self.meters or remaining_iters <= 0:
            return 0.0
        return remaining_iters * self.meters[time_key].median
