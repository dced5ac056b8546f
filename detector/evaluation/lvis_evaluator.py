"""LVIS box evaluation: ``LVISEvaluator`` with a fast vectorised backend and the lvis-api backend (columnar
results I/O with bounded memory lives in ``columnar``).

``LVISEvaluator.evaluate(results, per_class=False) -> dict`` follows ``COCOEvaluator``: a flat dict of
fractions AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR<max_dets>, ARs, ARm, ARl as
``LVISEval.results`` reports them (-1.0 where nothing has ground truth), plus ``per_class`` {name: AP or
None} and ``per_class_frequency`` {name: "r" | "c" | "f"} when asked.

Backends:

* ``"fast"`` (default): ``lvis_fast``, a vectorised re-implementation of lvis-api's exact rules; the
  same numbers (tests compare every metric and the whole precision array bit for bit on random files),
  far less time and memory.  It never imports lvis.
* ``"lvis-api"``: ``lvis.LVISResults`` + ``lvis.LVISEval`` through ``lvis_compat`` (NumPy 2 shim); their
  prints and log records go to this module's logger at DEBUG level.

Both backends drop detections on images absent from the ground truth (with a warning; lvis-api would
assert) and cap each image at ``max_dets`` detections BEFORE looking at categories, as ``LVISResults``
does: a detection of an unknown category still takes a slot, then is ignored.  No detection at all is
evaluated as such (every AP with ground truth is 0.0) with a warning; lvis-api itself crashes there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .ap_common import mean_valid as _mean_valid
from .ap_common import pr_curves_from_precision
from .lvis_compat import import_lvis
from .lvis_fast import (
    FREQUENCY_LABELS,
    IOU_THRESHOLDS,
    Columnar,
    LvisGroundTruth,
    as_columnar,
    evaluate_columnar,
    load_lvis_ground_truth,
    summarize,
)
from .results import _format_ids

__all__ = ["LVISEvaluator"]

logger = logging.getLogger(__name__)

BACKENDS = ("fast", "lvis-api")
_COLUMNS = ("image_id", "category_id", "bbox", "score")


class _ForwardToDebug(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("%s: %s", record.name, record.getMessage())


@contextlib.contextmanager
def _lvis_output_to_debug() -> Iterator[None]:
    """Route lvis' prints and log records (and its Logger.warn deprecation notices) to DEBUG."""
    lvis_logger = logging.getLogger("lvis")
    saved = (lvis_logger.level, lvis_logger.propagate)
    handler = _ForwardToDebug()
    lvis_logger.addHandler(handler)
    lvis_logger.setLevel(logging.INFO)
    lvis_logger.propagate = False
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The 'warn' method is deprecated", category=DeprecationWarning)
            yield
    finally:
        lvis_logger.removeHandler(handler)
        lvis_logger.setLevel(saved[0])
        lvis_logger.propagate = saved[1]
        if buffer.getvalue().strip():
            logger.debug("lvis output:\n%s", buffer.getvalue().strip())


class LVISEvaluator:
    """Box AP on an LVIS-format ground truth (v0.5 / v1: ``neg_category_ids``, ``not_exhaustive_category_ids``
    per image, ``frequency`` per category).

    Args:
        ann_file: LVIS annotation JSON.
        max_dets: detections per image that count (top-scoring first, all categories together); 300 for LVIS.
        backend: ``"fast"`` (vectorised, identical numbers) or ``"lvis-api"`` (the lvis package).
    """

    def __init__(self, ann_file: str | os.PathLike, max_dets: int = 300, backend: str = "fast") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if int(max_dets) != max_dets or max_dets < 1:
            raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file {ann_file} does not exist")
        self.ann_file = ann_file
        self.max_dets = int(max_dets)
        self.backend = backend
        if backend == "lvis-api":
            lvis = import_lvis()
            with _lvis_output_to_debug():
                self._lvis_gt = lvis.LVIS(str(ann_file))
            self._gt = LvisGroundTruth.from_dataset(self._lvis_gt.dataset, source=str(ann_file))
        else:
            self._gt = load_lvis_ground_truth(ann_file)
        self.image_ids: list[int] = self._gt.image_ids.tolist()
        self.cat_ids: list[int] = self._gt.cat_ids.tolist()
        names = list(self._gt.cat_names)
        duplicated = {name for name in names if names.count(name) > 1}
        self.class_names: list[str] = [
            f"{name} ({cat_id})" if name in duplicated else name for name, cat_id in zip(names, self.cat_ids)
        ]
        self.category_frequency: dict[int, str] = {
            cat_id: FREQUENCY_LABELS[index] for cat_id, index in zip(self.cat_ids, self._gt.cat_frequency.tolist())
        }

    def _restrict(self, results: list[dict] | Columnar) -> Columnar:
        """Columnar results without detections on unknown images (warned); unknown categories are kept
        (they take per-image slots in lvis-api) and reported."""
        columns = as_columnar(results)
        position = np.searchsorted(self._gt.image_ids, columns["image_id"])
        known = position < len(self.image_ids)
        known[known] = self._gt.image_ids[position[known]] == columns["image_id"][known]
        if not known.all():
            logger.warning(
                "dropped %d of %d detections on images %s that are not in the ground truth",
                int((~known).sum()),
                len(known),
                _format_ids(np.unique(columns["image_id"][~known]).tolist()),
            )
            columns = {key: value[known] for key, value in columns.items()}
        unknown_cats = ~np.isin(columns["category_id"], self._gt.cat_ids)
        if unknown_cats.any():
            logger.warning(
                "%d detections have categories %s absent from the ground truth: they count towards the "
                "per-image cap of %d, then are ignored (as in lvis-api)",
                int(unknown_cats.sum()),
                _format_ids(np.unique(columns["category_id"][unknown_cats]).tolist()),
                self.max_dets,
            )
        return columns

    def evaluate(self, results: list[dict] | Columnar, per_class: bool = False, pr_curves: bool = False) -> dict:
        """Score detections given as COCO-format dicts (``image_id``, ``category_id``, ``bbox`` xywh,
        ``score``) or as a columnar dict of arrays (``load_results_columnar``'s format).

        Returns the flat metrics dict described in the module docstring; ``per_class`` adds
        {class name: AP over IoU 0.50:0.95, area "all"} (None without ground truth) and the classes'
        frequency groups; ``pr_curves`` adds {class name: 101 precisions at recall 0.00, 0.01, ..., 1.00}
        at IoU 0.50, area "all", max_dets (classes without ground truth left out).
        """
        columns = self._restrict(results)
        if len(columns["score"]) == 0:
            logger.warning("no detections to evaluate: every AP and AR with ground truth is 0")
        if self.backend == "lvis-api" and len(columns["score"]):
            precision, recall, metrics = self._run_lvis_api(columns)
        else:
            precision, recall = evaluate_columnar(self._gt, columns, self.max_dets)
            metrics = summarize(self._gt, precision, recall)
        metrics = {(f"AR{self.max_dets}" if key == "AR" else key): value for key, value in metrics.items()}
        if per_class:
            per_class_ap = (_mean_valid(precision[:, :, k, 0]) for k in range(len(self.cat_ids)))  # area "all"
            metrics["per_class"] = {name: (None if ap < 0 else ap) for name, ap in zip(self.class_names, per_class_ap)}
            metrics["per_class_frequency"] = {
                name: self.category_frequency[cat_id] for name, cat_id in zip(self.class_names, self.cat_ids)
            }
        if pr_curves:
            t50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])
            metrics["pr_curves"] = pr_curves_from_precision(precision[t50, :, :, 0], self.class_names)  # area "all"
        logger.debug("LVIS metrics: %s", {k: v for k, v in metrics.items() if not isinstance(v, dict)})
        return metrics

    def _run_lvis_api(self, columns: Columnar) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """lvis-api's own evaluation: (precision, recall, LVISEval.results with our key names)."""
        lvis = import_lvis()
        dicts = [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(*(columns[key].tolist() for key in _COLUMNS))
        ]
        with _lvis_output_to_debug():
            lvis_dt = lvis.LVISResults(self._lvis_gt, dicts, max_dets=self.max_dets)
            lvis_eval = lvis.LVISEval(self._lvis_gt, lvis_dt, iou_type="bbox")
            lvis_eval.run()
            lvis_eval.print_results()
        renamed = {}
        for key, value in lvis_eval.results.items():
            name = key.split("@")[0]  # "AR@300" -> "AR", "ARs@300" -> "ARs"
            renamed[name] = float(value)
        return lvis_eval.eval["precision"], lvis_eval.eval["recall"], renamed
