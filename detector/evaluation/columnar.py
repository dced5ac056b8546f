"""Detections as numpy columns: conversion, a streaming JSON loader, and per-process shards.

A results list of millions of dicts costs gigabytes (LVIS: 300 detections on 20k images); the fast
evaluators take ``{"image_id": (N,) int64, "category_id": (N,) int64, "bbox": (N, 4) float64 xywh,
"score": (N,) float64}`` instead.  ``load_results_columnar`` reads a COCO-format results JSON into that
form chunk by chunk; ``write_results_shard`` / ``merge_result_shards`` move results between processes of
a distributed run through files rather than pickled gathers.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .results import ResultsFormatError, _check_entry, _format_ids

__all__ = ["Columnar", "as_columnar", "load_results_columnar", "merge_result_shards", "write_results_shard"]

Columnar = dict[str, np.ndarray]

_COLUMNS = ("image_id", "category_id", "bbox", "score")
_CHUNK_CHARS = 1 << 24  # characters of results JSON parsed at once (~180k detections)
_MAX_CUT_RETRIES = 64
_MIN_ENTRY_CHARS = len('{"image_id":0,"category_id":0,"bbox":[0,0,0,0],"score":0}')


def _empty_columns(size: int) -> Columnar:
    """Uninitialised columns for ``size`` detections."""
    return {
        "image_id": np.empty(size, dtype=np.int64),
        "category_id": np.empty(size, dtype=np.int64),
        "bbox": np.empty((size, 4), dtype=np.float64),
        "score": np.empty(size, dtype=np.float64),
    }


def as_columnar(results: list[dict] | Columnar) -> Columnar:
    """``{"image_id": (N,) int64, "category_id": (N,) int64, "bbox": (N, 4) float64, "score": (N,) float64}``.

    Accepts COCO-format result dicts or an already columnar dict (arrays are converted, not copied when
    they have the right dtype).  Scores stay float64 so the ranking and its ties are lvis-api's.
    """
    if isinstance(results, dict):
        try:
            columns = {
                "image_id": np.asarray(results["image_id"], dtype=np.int64).reshape(-1),
                "category_id": np.asarray(results["category_id"], dtype=np.int64).reshape(-1),
                "bbox": np.asarray(results["bbox"], dtype=np.float64),
                "score": np.asarray(results["score"], dtype=np.float64).reshape(-1),
            }
        except KeyError as error:
            raise ValueError(f"columnar results need image_id, category_id, bbox and score: {error}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"results are not numeric, or a bbox is not 4 numbers: {error}") from None
        if columns["bbox"].size == 0:
            columns["bbox"] = columns["bbox"].reshape(0, 4)
        if columns["bbox"].ndim != 2 or columns["bbox"].shape[1] != 4:
            shape = columns["bbox"].shape
            raise ValueError(f"every bbox must be 4 numbers [x, y, w, h]; got an array of shape {shape}")
        sizes = {key: len(value) for key, value in columns.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"columnar results have different lengths: {sizes}")
        return columns
    try:
        rows = [(r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in results]
    except (KeyError, TypeError) as error:
        raise ValueError("every result must be a dict with image_id, category_id, bbox and score") from error
    if not rows:
        return as_columnar({"image_id": [], "category_id": [], "bbox": np.zeros((0, 4)), "score": []})
    image_id, category_id, bbox, score = zip(*rows)
    return as_columnar({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})



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
        # numpy turns [true, 0.5] into [1.0, 0.5]: JSON booleans are found by their Python type first.
        has_bool = bool in {type(v) for column in (image_id, category_id, score) for v in column} or \
            any(type(v) is bool for box in bbox for v in box)
        valid = (
            not has_bool
            and columns["image_id"].dtype.kind in "iu"
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
    buffers = _empty_columns(capacity)
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
    merged = _empty_columns(total)
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
