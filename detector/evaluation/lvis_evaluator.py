"""LVIS box evaluation: ``LVISEvaluator`` with a fast vectorised backend and the lvis-api backend, and
columnar results I/O with bounded memory (a streaming JSON loader; per-process shards for distributed runs).

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
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
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
from .results import ResultsFormatError, _check_entry, _format_ids

__all__ = ["LVISEvaluator", "load_results_columnar", "merge_result_shards", "write_results_shard"]

logger = logging.getLogger(__name__)

BACKENDS = ("fast", "lvis-api")
_COLUMNS = ("image_id", "category_id", "bbox", "score")
_CHUNK_CHARS = 1 << 24  # characters of results JSON parsed at once (~180k detections)
_MAX_CUT_RETRIES = 64
_MIN_ENTRY_CHARS = len('{"image_id":0,"category_id":0,"bbox":[0,0,0,0],"score":0}')


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
            self._gt = LvisGroundTruth.from_dataset(self._lvis_gt.dataset)
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


# ---------------------------------------------------------------------------------------------------------
# Columnar results files


def _iter_result_chunks(path: Path, chunk_chars: int) -> Iterator[Columnar]:
    """Columns of a top-level JSON list of results, parsed ``chunk_chars`` characters at a time.

    Each block is cut after its last ``}``; the piece is parsed by ``_parse_canonical`` when it has the
    canonical layout, otherwise as ``[piece]`` by the C json decoder (a cut that splits a nested object
    fails to parse at its end and moves back to the previous ``}``).
    """
    count = 0  # entries parsed so far, for error messages

    def parse(piece: str) -> Columnar:
        nonlocal count
        columns = _parse_canonical(piece)
        if columns is None:
            columns = _chunk_to_columns(path, json.loads("[" + piece + "]"), count)
        count += len(columns["score"])
        return columns

    with open(path, encoding="utf-8") as f:
        text = f.read(chunk_chars).lstrip()
        while not text:
            block = f.read(chunk_chars)
            if not block:
                raise ResultsFormatError(f"results file {path} is empty, expected a JSON list")
            text = block.lstrip()
        if text[0] != "[":
            kind = "an object" if text[0] == "{" else "not a list"
            raise ResultsFormatError(f"results file {path}: top level is {kind}, expected a JSON list of detections")
        text = text[1:]
        after_element = False  # text starts right after a parsed element: a comma or "]" comes next
        after_comma = False  # ... or right after that comma: an element must come next
        while block := f.read(chunk_chars):
            text += block
            if after_element:
                text = text.lstrip()
                if not text.startswith(","):
                    continue  # only whitespace so far, or "]" (handled at the end)
                text, after_element, after_comma = text[1:], False, True
            cut = text.rfind("}")
            for _ in range(_MAX_CUT_RETRIES):
                if cut < 0:
                    break
                try:
                    columns = parse(text[: cut + 1])
                except json.JSONDecodeError as error:
                    # "[" + text[: cut + 1] + "]": an error before the closing "]" (at cut + 2) is real.
                    if error.pos < cut + 2 and not error.msg.startswith("Unterminated string"):
                        raise ResultsFormatError(f"results file {path} is not valid JSON: {error.msg}") from None
                    cut = text.rfind("}", 0, cut)
                    continue
                yield columns
                text, after_element, after_comma = text[cut + 1 :], True, False
                break
        rest = text.strip()
        if after_element:
            if rest == "]":
                return
            if not rest.startswith(","):
                problem = "the list is not closed" if not rest else "expected ',' or ']' after an entry"
                raise ResultsFormatError(f"results file {path} is not valid JSON: {problem}")
            rest, after_comma = rest[1:].lstrip(), True
        if not rest.endswith("]"):
            raise ResultsFormatError(f"results file {path} is not valid JSON: the list is not closed")
        body = rest[:-1].strip()
        if not body:
            if after_comma:
                raise ResultsFormatError(f"results file {path} is not valid JSON: a comma before ']'")
            return
        try:
            yield parse(body)
        except json.JSONDecodeError as error:
            raise ResultsFormatError(f"results file {path} is not valid JSON: {error.msg}") from None


# The canonical layout is json.dump's of flat result dicts: {"image_id": 1, "category_id": 3,
# "bbox": [x, y, w, h], "score": s} (any key order, separators ", " / ": " or compact, or a newline
# after a comma).  Its numbers are parsed by one np.fromstring call (correctly rounded like float(),
# tested), ~3x faster than json.loads and without a dict per detection.
_SKELETON = str.maketrans("", "", "0123456789.-+eE \n")  # what is left of the text without its numbers
_STRUCTURE = str.maketrans("{}[],:", "      ")
_NON_INTEGER_ID = re.compile(r'_id": ?-?[0-9]*[.eE]')  # "image_id": 1.0 goes to the validating path
_WIDTH = {"image_id": 1, "category_id": 1, "bbox": 4, "score": 1}


def _parse_canonical(piece: str) -> Columnar | None:
    """Columns of a piece ``{...}, {...}`` in the canonical layout, or None when it is not in it."""
    piece = piece.strip()
    try:
        head = json.loads(piece[: piece.find("}") + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(head, dict) or set(head) != set(_WIDTH) or len(head) != len(_WIDTH):
        return None
    keys = list(head)
    unit = "{" + ",".join(f'"{key}":' + ("[,,,]" if key == "bbox" else "") for key in keys) + "}"
    num = piece.count("{")
    if piece.translate(_SKELETON) != ",".join([unit.translate(_SKELETON)] * num):
        return None
    # Whitespace only right after a separator: then no slot can hold two numbers.
    if piece.count(" ") + piece.count("\n") != piece.count(", ") + piece.count(": ") + piece.count(",\n"):
        return None
    if _NON_INTEGER_ID.search(piece):
        return None
    for key in keys:
        piece = piece.replace(f'"{key}"', " ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fromstring only warns about text it cannot parse
        try:
            values = np.fromstring(piece.translate(_STRUCTURE), dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if values.size != num * 7:
        return None
    values = values.reshape(num, 7)
    columns, start = {}, 0
    for key in keys:
        columns[key] = values[:, start : start + _WIDTH[key]]
        start += _WIDTH[key]
    ids = np.concatenate([columns["image_id"], columns["category_id"]], axis=1)
    if not (np.abs(ids) <= 2**53).all():
        return None
    return as_columnar({key: np.ascontiguousarray(value) for key, value in columns.items()})


def _chunk_to_columns(path: Path, items: list, first: int) -> Columnar:
    """Validated arrays of one chunk parsed by json; a bad entry is reported by its index in the file."""
    try:
        rows = [(r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in items]
        image_id, category_id, bbox, score = zip(*rows)
        columns = {
            "image_id": np.array(image_id),
            "category_id": np.array(category_id),
            "bbox": np.array(bbox),
            "score": np.array(score),
        }
        valid = (
            columns["image_id"].dtype.kind in "iu"
            and columns["category_id"].dtype.kind in "iu"
            and columns["bbox"].ndim == 2
            and columns["bbox"].shape[1] == 4
            and columns["bbox"].dtype.kind in "iuf"
            and columns["score"].dtype.kind in "iuf"
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        for offset, entry in enumerate(items):
            _check_entry(path, first + offset, entry)  # raises ResultsFormatError naming the entry
        raise ResultsFormatError(f"results file {path}: entries {first}..{first + len(items) - 1} are malformed")
    return as_columnar(columns)


def load_results_columnar(
    path: str | os.PathLike,
    image_ids: Iterable[int] | None = None,
    cat_ids: Iterable[int] | None = None,
    chunk_chars: int = _CHUNK_CHARS,
) -> Columnar:
    """Read a COCO-format results JSON into ``{"image_id", "category_id", "bbox" (N, 4), "score"}`` arrays.

    The file is parsed ``chunk_chars`` characters at a time, so memory holds the arrays plus one chunk
    instead of millions of dicts (6M detections: 0.34 GB of arrays against ~3 GB as dicts).  The
    returned arrays are views of buffers sized for the largest count the file could hold; the unused
    tail is never written, so it takes address space, not memory.
    Entries are validated as ``load_results`` does; with ``image_ids`` / ``cat_ids`` unknown ids raise
    ``ResultsFormatError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    # Chunks are copied into arrays sized for the most entries the file can hold (each entry is at least
    # _MIN_ENTRY_CHARS long); pages never written are never resident, so memory follows the real count
    # and no list of chunk arrays is kept or concatenated.
    capacity = path.stat().st_size // _MIN_ENTRY_CHARS + 1
    buffers = {
        "image_id": np.empty(capacity, dtype=np.int64),
        "category_id": np.empty(capacity, dtype=np.int64),
        "bbox": np.empty((capacity, 4), dtype=np.float64),
        "score": np.empty(capacity, dtype=np.float64),
    }
    count = 0
    for chunk in _iter_result_chunks(path, chunk_chars):
        size = len(chunk["score"])
        for key in _COLUMNS:
            buffers[key][count : count + size] = chunk[key]
        count += size
    columns = {key: buffer[:count] for key, buffer in buffers.items()}
    for key, allowed in (("image_id", image_ids), ("category_id", cat_ids)):
        if allowed is not None:
            unknown = np.setdiff1d(columns[key], np.asarray(list(allowed), dtype=np.int64))
            if unknown.size:
                where = "the ground truth" if key == "image_id" else "the categories"
                raise ResultsFormatError(f"results file {path}: {key} {_format_ids(unknown.tolist())} not in {where}")
    return columns


def write_results_shard(path: str | os.PathLike, results: list[dict] | Columnar) -> Path:
    """Write one process's detections as an uncompressed ``.npz`` of columnar arrays (atomic rename).

    Distributed evaluation without a pickled gather: every rank writes ``shard_<rank>.npz`` to a shared
    directory, all ranks meet at ``torch.distributed.barrier()``, and rank 0 calls ``merge_result_shards``.
    """
    path = Path(path)
    columns = as_columnar(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    with open(tmp_path, "wb") as f:
        np.savez(f, **columns)
    os.replace(tmp_path, path)
    return path


def merge_result_shards(paths: Sequence[str | os.PathLike]) -> Columnar:
    """Concatenate shards written by ``write_results_shard``, in the given order (keep rank order: score
    ties are broken by input order).  Memory: the merged arrays plus one shard column at a time."""
    sizes = []
    for path in paths:
        with np.load(path, allow_pickle=False) as shard:
            missing = [key for key in _COLUMNS if key not in shard.files]
            if missing:
                raise ValueError(f"results shard {path} lacks {', '.join(missing)}")
            sizes.append(len(shard["score"]))
    total = sum(sizes)
    merged = {
        "image_id": np.empty(total, dtype=np.int64),
        "category_id": np.empty(total, dtype=np.int64),
        "bbox": np.empty((total, 4), dtype=np.float64),
        "score": np.empty(total, dtype=np.float64),
    }
    start = 0
    for path, size in zip(paths, sizes):
        with np.load(path, allow_pickle=False) as shard:
            for key in _COLUMNS:
                column = shard[key]
                if len(column) != size:
                    raise ValueError(f"results shard {path}: {key} has {len(column)} rows, score has {size}")
                merged[key][start : start + size] = column
        start += size
    return merged
