"""COCO-format detection results: conversion from model outputs, saving and validated loading.

The COCO results format (used by pycocotools' ``COCO.loadRes`` and by the LVIS API) is a JSON list
with one object per detection::

    {"image_id": 42, "category_id": 18, "bbox": [x, y, w, h], "score": 0.93}

where ``bbox`` is in ORIGINAL image pixels, (x, y) the top-left corner, and ``category_id`` the dataset's
own (possibly non-contiguous) category id.  The model works with contiguous 0-based labels; a
``label_to_cat_id`` list maps them back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert

__all__ = [
    "ResultsFormatError",
    "check_result_columns",
    "detections_to_coco_results",
    "save_results",
    "load_results",
]

# Box coordinates are written with two decimals (1/100 pixel), far below any IoU-relevant precision,
# which keeps result files small and readable.
BOX_DECIMALS = 2

_REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")
# How many offending ids an error message lists before it summarises the rest.
_MAX_IDS_IN_MESSAGE = 10


class ResultsFormatError(ValueError):
    """A results file exists but does not hold valid COCO-format detection results."""


def _image_detections_to_coco(
    pred_boxes: torch.Tensor,
    pred_scores: torch.Tensor,
    pred_labels: torch.Tensor,
    image_id: int,
    cat_id_table: torch.Tensor,
) -> list[dict]:
    """Convert one image's detections (tensors) into COCO result dicts."""
    pred_boxes = pred_boxes.detach().to("cpu", torch.float64).reshape(-1, 4)  # (N, 4) xyxy
    pred_scores = pred_scores.detach().to("cpu", torch.float32).reshape(-1)  # (N,)
    pred_labels = pred_labels.detach().to("cpu", torch.int64).reshape(-1)  # (N,)
    num_dets = pred_boxes.shape[0]
    if pred_scores.numel() != num_dets or pred_labels.numel() != num_dets:
        raise ValueError(
            f"image {image_id}: boxes, scores and labels disagree in length "
            f"({num_dets}, {pred_scores.numel()}, {pred_labels.numel()})"
        )
    if num_dets == 0:
        return []
    num_classes = cat_id_table.numel()
    min_label, max_label = int(pred_labels.min()), int(pred_labels.max())
    if min_label < 0 or max_label >= num_classes:
        raise ValueError(
            f"image {image_id}: labels must lie in [0, {num_classes}) to map to category ids, "
            f"got values in [{min_label}, {max_label}]"
        )
    xywh = torch.round(box_convert(pred_boxes, in_fmt="xyxy", out_fmt="xywh"), decimals=BOX_DECIMALS)
    cat_ids = cat_id_table[pred_labels]  # (N,)
    # One .tolist() per field, then a cheap comprehension: no tensor indexing per detection.
    return [
        {"image_id": image_id, "category_id": cat_id, "bbox": bbox, "score": score}
        for bbox, score, cat_id in zip(xywh.tolist(), pred_scores.tolist(), cat_ids.tolist())
    ]


def detections_to_coco_results(
    detections: list[dict],
    image_ids: list[int],
    label_to_cat_id: list[int],
) -> list[dict]:
    """Convert per-image detections into a flat list of COCO result dicts.

    Args:
        detections: one dict per image with ``boxes`` float (N, 4) xyxy in ORIGINAL image pixels,
            ``scores`` (N,) and ``labels`` int64 (N,) contiguous 0-based class indices.
        image_ids: the dataset image id of each entry of ``detections`` (same length).
        label_to_cat_id: contiguous label -> original category id (e.g. ``[1, 3, 7]``).

    Returns:
        A list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts, boxes
        rounded to ``BOX_DECIMALS`` decimals, scores kept at float32 precision (rounding scores
        would create ties and change the ranking that AP depends on).

    Raises:
        ValueError: when the lengths disagree or a label has no category id.
    """
    if len(detections) != len(image_ids):
        raise ValueError(
            f"got {len(detections)} detection dicts but {len(image_ids)} image ids; they must match"
        )
    cat_id_table = torch.as_tensor(list(label_to_cat_id), dtype=torch.int64)  # (K,)
    results: list[dict] = []
    for image_detections, image_id in zip(detections, image_ids):
        results.extend(
            _image_detections_to_coco(
                image_detections["boxes"],
                image_detections["scores"],
                image_detections["labels"],
                int(image_id),
                cat_id_table,
            )
        )
    return results


def save_results(path: str | os.PathLike, results: list[dict]) -> Path:
    """Write COCO results as JSON to ``path`` (parent directories are created).

    The file is written to a temporary sibling first and then renamed, so an interrupted run never
    leaves a truncated results file behind.  Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(results, f)
    os.replace(tmp_path, path)
    return path


def _format_ids(ids: Iterable[int]) -> str:
    """``[3, 9, 12]`` or ``[3, 9, ... and 40 more]`` for error messages."""
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS_IN_MESSAGE])
    if len(ids) > _MAX_IDS_IN_MESSAGE:
        shown += f", ... and {len(ids) - _MAX_IDS_IN_MESSAGE} more"
    return f"[{shown}]"


def _entry_text(entry: object, limit: int = 120) -> str:
    """An entry's JSON text, cut to ``limit`` characters, for messages."""
    try:
        text = json.dumps(entry)
    except (TypeError, ValueError):
        text = repr(entry)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _check_entry(path: Path, index: int, entry: object) -> None:
    """Raise ResultsFormatError if one result entry is not a well-formed detection; the message names the
    file, the entry's index in the list and shows the entry."""

    def error(problem: str) -> ResultsFormatError:
        return ResultsFormatError(f"results file {path}: entry {index} {problem} (the entry: {_entry_text(entry)})")

    if not isinstance(entry, dict):
        raise error(f"is a {type(entry).__name__}, expected an object")
    missing = [key for key in _REQUIRED_KEYS if key not in entry]
    if missing:
        raise error(f"is missing {', '.join(missing)} (each entry needs {', '.join(_REQUIRED_KEYS)})")
    for key in ("image_id", "category_id"):
        value = entry[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise error(f"has {key} {value!r}, expected an integer")
    bbox = entry["bbox"]
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise error(f"has bbox {bbox!r}, expected a list of 4 numbers [x, y, w, h]")
    if not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise error(f"has bbox {bbox!r}: coordinates must be finite, width and height >= 0")
    score = entry["score"]
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        raise error(f"has score {score!r}, expected a finite number")


def check_result_columns(path: str | os.PathLike, columns: dict) -> None:
    """Apply ``_check_entry``'s value rules to columnar results (``bbox`` (N, 4), ``score`` (N,) arrays, as
    ``load_results_columnar`` returns them): every coordinate and score finite, widths and heights >= 0.

    Raises:
        ResultsFormatError: naming the file and the first offending entry by its index.
    """
    bbox = np.asarray(columns["bbox"], dtype=np.float64).reshape(-1, 4)  # (N, 4)
    score = np.asarray(columns["score"], dtype=np.float64).reshape(-1)  # (N,)
    bad = ~np.isfinite(bbox).all(axis=1) | (bbox[:, 2] < 0) | (bbox[:, 3] < 0) | ~np.isfinite(score)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ResultsFormatError(
            f"results file {Path(path)}: entry {index} has bbox {bbox[index].tolist()} and score "
            f"{float(score[index])}: coordinates and scores must be finite, width and height >= 0 "
            f"({int(bad.sum())} such entries)"
        )


def _check_known(path: Path, results: list[dict], key: str, allowed: set[int], what: str) -> None:
    """Raise ResultsFormatError listing the values of ``key`` not in ``allowed`` and the first entry with one."""
    unknown = {entry[key] for entry in results} - allowed
    if unknown:
        index = next(i for i, entry in enumerate(results) if entry[key] in unknown)
        raise ResultsFormatError(
            f"results file {path}: {key} {_format_ids(unknown)} not in {what} (first at entry {index}: "
            f"{_entry_text(results[index])})"
        )


def load_results(
    path: str | os.PathLike,
    image_ids: Iterable[int] | None = None,
    cat_ids: Iterable[int] | None = None,
) -> list[dict]:
    """Load and validate a COCO-format results JSON file.

    Args:
        path: the results file (a JSON list of detections; an empty list is valid).
        image_ids: if given, every ``image_id`` must be one of these (the ground-truth images).
        cat_ids: if given, every ``category_id`` must be one of these (the dataset's categories).

    Raises:
        FileNotFoundError: the file does not exist.
        ResultsFormatError (a ValueError): invalid JSON, top level not a list, an entry that is not
            an object or misses image_id/category_id/bbox/score, a malformed bbox (not 4 finite numbers,
            negative width or height) or score (not a finite number), or ids absent from the ground truth.
            Every message names the file, the offending entry (index and text) and the offending ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except json.JSONDecodeError as error:
        raise ResultsFormatError(f"results file {path} is not valid JSON: {error}") from error
    except UnicodeDecodeError as error:
        raise ResultsFormatError(
            f"results file {path} is not valid JSON (not UTF-8 text: {error.reason} at byte {error.start})"
        ) from error
    if not isinstance(results, list):
        raise ResultsFormatError(
            f"results file {path}: top level is a JSON {type(results).__name__}, "
            "expected a list of detections"
        )
    for index, entry in enumerate(results):
        _check_entry(path, index, entry)

    if image_ids is not None:
        _check_known(path, results, "image_id", set(image_ids), "the ground truth")
    if cat_ids is not None:
        _check_known(path, results, "category_id", set(cat_ids), "the categories")
    return results

