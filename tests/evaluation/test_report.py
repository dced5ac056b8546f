"""Metric tables and the flat metrics JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector.evaluation import format_metrics_table, format_per_class_table, write_metrics_json

METRICS = {
    "AP": 0.3654,
    "AP50": 0.5541,
    "AP75": 0.39049,
    "APs": -1.0,
    "APm": 0.4,
    "APl": np.float64(0.48125),
    "AR100": 0.5,
    "per_class": {"cat": 0.5},
}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_metrics_table_percent_one_decimal():
    table = format_metrics_table(METRICS)
    lines = table.splitlines()
    assert len(lines) == 3
    header, values = (_cells(lines[0]), _cells(lines[2]))
    assert header == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert set(lines[1]) <= {"|", "-", " "}
    # -1 (no ground truth in that area range) prints as "-"; 0.48125 -> 48.1.
    assert values == ["36.5", "55.4", "39.0", "-", "40.0", "48.1"]


def test_metrics_table_includes_lvis_keys_and_rejects_empty():
    table = format_metrics_table({"AP": 0.2, "APr": 0.1, "APc": 0.15, "APf": 0.3})
    assert "APr" in table and "10.0" in table and "30.0" in table
    with pytest.raises(ValueError, match="no AP metrics"):
        format_metrics_table({"loss": 1.0})


def test_per_class_table_layout():
    per_class = {"cat": 1.0, "dog": 0.0, "bird": 0.25, "fish": None, "ant": float("nan")}
    lines = format_per_class_table(per_class, columns=2).splitlines()
    cells = [_cells(line) for line in lines]
    assert cells[0] == ["category", "AP", "category", "AP"]
    assert cells[2] == ["cat", "100.0", "dog", "0.0"]
    assert cells[3] == ["bird", "25.0", "fish", "-"]
    assert cells[4] == ["ant", "-", "", ""]
    # Fewer classes than columns: one row, no empty columns.
    assert format_per_class_table({"cat": 0.5}, columns=3).splitlines()[0].count("category") == 1
    with pytest.raises(ValueError):
        format_per_class_table(per_class, columns=0)


def test_write_metrics_json_flat_fractions(tmp_path):
    metrics = {**METRICS, "num_images": 5, "note": "x", "nan_metric": float("nan")}
    path = write_metrics_json(tmp_path / "out" / "metrics.json", metrics)
    written = json.loads(path.read_text())
    assert list(written) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "nan_metric"]
    assert written["AP"] == 0.3654 and written["APs"] == -1.0 and written["APl"] == 0.48125
    assert written["nan_metric"] is None
    assert all(value is None or not math.isnan(value) for value in written.values())
