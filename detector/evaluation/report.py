"""Human-readable tables and a flat JSON file for evaluation metrics.

Tables are Markdown (readable as plain text, pasteable into the README's reproduction tables) and print
metrics in percent with one decimal, as papers do.  The JSON file keeps fractions, as pycocotools
reports them.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

__all__ = ["HEADLINE_KEYS", "format_metrics_table", "format_per_class_table", "write_metrics_json"]

# Table columns, in order; keys absent from a metrics dict are skipped (APr/APc/APf exist for LVIS only).
HEADLINE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")

_MISSING = "-"


def _is_number(value: object) -> bool:
    """A real scalar (Python or NumPy), excluding booleans."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _percent(value: object) -> str:
    """A fraction as a percentage with one decimal; "-" for None, NaN or negative (no ground truth)."""
    if not _is_number(value) or math.isnan(value) or value < 0:
        return _MISSING
    return f"{100.0 * float(value):.1f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with columns padded to a common width."""
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"
        for row in [header, *rows]
    ]
    lines.insert(1, "| " + " | ".join("-" * width for width in widths) + " |")
    return "\n".join(lines)


def format_metrics_table(metrics: dict) -> str:
    """A one-row table of AP, AP50, AP75, APs, APm, APl (and APr, APc, APf when present), in percent.

    Values of -1 (pycocotools: no ground truth in that area range), None or NaN print as "-".

    Example::

        | AP   | AP50 | AP75 | APs  | APm  | APl  |
        | ---- | ---- | ---- | ---- | ---- | ---- |
        | 36.5 | 55.4 | 39.1 | 20.4 | 40.3 | 48.1 |
    """
    keys = [key for key in HEADLINE_KEYS if key in metrics]
    if not keys:
        raise ValueError(f"no AP metrics to tabulate; got keys {sorted(metrics)}")
    return _markdown_table(keys, [[_percent(metrics[key]) for key in keys]])


def format_per_class_table(per_class: dict, columns: int = 3) -> str:
    """Per-class AP in ``columns`` side-by-side (category, AP) pairs, filled row by row.

    ``per_class`` maps class name -> AP fraction; None (no ground truth) prints as "-". Classes keep the
    dict's order (the dataset's category order).
    """
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    cells = [[str(name), _percent(ap)] for name, ap in per_class.items()]
    columns = max(1, min(columns, len(cells)))
    header = ["category", "AP"] * columns
    rows = []
    for start in range(0, len(cells), columns):
        row = [cell for pair in cells[start : start + columns] for cell in pair]
        row += [""] * (2 * columns - len(row))
        rows.append(row)
    return _markdown_table(header, rows)


def write_metrics_json(path: str | os.PathLike, metrics: dict) -> Path:
    """Write the scalar metrics as flat JSON (fractions, not percent); parent directories are created.

    Kept: the headline keys present (AP, AP50, AP75, APs, APm, APl, then APr, APc, APf) and any other
    key whose value is a float (e.g. AR100), in the dict's order; nested entries such as ``per_class``
    and integer counts are left out. NaN and infinities are written as null so the file stays strict
    JSON. Returns the path written.
    """
    keys = [key for key in HEADLINE_KEYS if key in metrics and _is_number(metrics[key])]
    keys += [
        key
        for key, value in metrics.items()
        if key not in HEADLINE_KEYS and _is_number(value) and not isinstance(value, numbers.Integral)
    ]
    flat = {}
    for key in keys:
        value = float(metrics[key])
        flat[str(key)] = value if math.isfinite(value) else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(flat, f, indent=2, allow_nan=False)
        f.write("\n")
    return path
