"""Training-curve figure from metrics.jsonl."""

import json

import pytest

from detector.analysis.metrics_plot import load_run, plot_metrics


def write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_load_run_series_and_resume_duplicates(tmp_path):
    work = tmp_path / "run_a"
    work.mkdir()
    write(work / "metrics.jsonl", [
        {"iter": 20, "train/loss": 2.0, "train/loss_cls": 1.5, "train/lr": 0.01},
        {"iter": 40, "train/loss": 1.0, "train/loss_cls": 0.5, "train/lr": 0.02},
        {"iter": 40, "val/AP": 0.1, "val/AP50": 0.3},
        {"iter": 40, "train/loss": 0.9, "train/loss_cls": 0.4, "train/lr": 0.02},  # resumed: the later wins
    ], tail='{"iter": 60, "train/lo')  # a killed run's half-written line is skipped
    run = load_run(work)
    assert run.name == "run_a"
    assert run.series["train/loss"] == ([20, 40], [2.0, 0.9])
    assert run.series["val/AP"] == ([40], [0.1])
    assert run.keys("train/loss") == ["train/loss", "train/loss_cls"]


def test_plot_overlaid_runs_and_errors(tmp_path):
    write(tmp_path / "a.jsonl", [{"iter": i, "train/loss": 1 / i, "train/lr": 0.01} for i in range(1, 5)])
    write(tmp_path / "b.jsonl", [{"iter": 4, "val/AP": 0.2}])
    runs = [load_run(tmp_path / "a.jsonl", "a"), load_run(tmp_path / "a.jsonl", "b")]
    assert plot_metrics(runs, tmp_path / "m.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="no train/loss"):
        plot_metrics([load_run(tmp_path / "b.jsonl")], tmp_path / "m2.png")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        load_run(tmp_path / "missing")
