"""Pieces shared by the COCO and LVIS evaluators: summary averaging and precision-recall curves.

Both pycocotools' ``COCOeval`` and lvis-api's ``LVISEval`` (and our vectorised re-implementations of
them) produce a precision array indexed (IoU threshold T, recall point R, class K, area range A, ...),
with -1 marking "no ground truth here".  Summaries average the entries > -1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mean_valid", "pr_curves_from_precision"]


def mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (``COCOeval.summarize`` / ``LVISEval._summarize``); -1.0 when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def pr_curves_from_precision(precision: np.ndarray, class_names: list[str]) -> dict[str, list[float]]:
    """{class name: precision at the 101 recall points 0.00, 0.01, ..., 1.00} from a (R, K) slice.

    ``precision`` is the evaluator's own array at one IoU threshold, area range and max-dets setting.
    A class whose column is all -1 (no ground truth that counts) is left out; any other -1 (none remain in
    practice) reads as 0.
    """
    if precision.ndim != 2 or precision.shape[1] != len(class_names):
        raise ValueError(f"precision slice of shape {precision.shape} does not match {len(class_names)} classes")
    curves = {}
    for k, name in enumerate(class_names):
        column = precision[:, k]
        if (column > -1).any():
            curves[name] = np.where(column > -1, column, 0.0).astype(float).tolist()
    return curves
