"""Tests for detector.runtime.metrics_log: JSON lines + TensorBoard output, rank gating, meters."""

import json
import math

import numpy as np
import pytest
import torch

from detector.runtime import metrics_log
from detector.runtime.metrics_log import MeterGroup, MetricsLogger, SmoothedValue, read_metrics_jsonl


def test_jsonl_lines_and_tensorboard_events(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(20, {"loss_cls": torch.tensor(1.25), "loss_box": np.float32(0.5), "lr": 0.01})
        # flushed immediately: readable while the run is still going
        assert read_metrics_jsonl(tmp_path / "metrics.jsonl") == [
            {"iter": 20, "train/loss_cls": 1.25, "train/loss_box": 0.5, "train/lr": 0.01}
        ]
        logger.log(40, {"AP": 0.31, "note": "coco"}, prefix="val")
        logger.log(60, {"custom/key": 3}, prefix=None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"iter": 20, "train/loss_cls": 1.25, "train/loss_box": 0.5, "train/lr": 0.01},
        {"iter": 40, "val/AP": 0.31, "val/note": "coco"},
        {"iter": 60, "custom/key": 3},
    ]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert {"train/loss_cls", "train/lr", "val/AP", "custom/key"} <= set(accumulator.Tags()["scalars"])
    (event,) = accumulator.Scalars("train/loss_cls")
    assert event.step == 20 and event.value == pytest.approx(1.25)


def test_appends_across_runs_and_keeps_nan(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 1.0})
    with MetricsLogger(tmp_path) as logger:  # a resumed run continues the same file
        logger.log(2, {"loss": float("nan")})
    records = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2]
    assert math.isnan(records[1]["train/loss"])


def test_disabled_and_non_main_rank_write_nothing(tmp_path, monkeypatch):
    MetricsLogger(tmp_path / "off", enabled=False).log(1, {"loss": 1.0})
    assert not (tmp_path / "off").exists()
    monkeypatch.setattr(metrics_log, "is_main_process", lambda: False)
    logger = MetricsLogger(tmp_path / "rank1")
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert not logger.enabled and not (tmp_path / "rank1").exists()


def test_rejects_non_scalar_metrics(tmp_path):
    with MetricsLogger(tmp_path, tensorboard_subdir=None) as logger:
        with pytest.raises(ValueError, match="loss"):
            logger.log(1, {"loss": torch.ones(3)})
        with pytest.raises(TypeError, match="cfg"):
            logger.log(1, {"cfg": {"a": 1}})


def test_read_metrics_skips_truncated_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 1, "a": 1}\n\n{"iter": 2, "a": 2}\n{"iter": 3, "a"')  # killed mid-write
    assert read_metrics_jsonl(path) == [{"iter": 1, "a": 1}, {"iter": 2, "a": 2}]
    path.write_text('{"iter": 1\n{"iter": 2}\n')
    with pytest.raises(ValueError, match=":1:"):
        read_metrics_jsonl(path)


def test_smoothed_value_window_and_global_stats():
    value = SmoothedValue(window_size=3)
    assert math.isnan(value.median) and math.isnan(value.global_avg)
    for v in (10.0, 1.0, 2.0, 3.0):
        value.update(v)
    assert value.latest == 3.0
    assert value.median == 2.0 and value.avg == 2.0  # window holds 1, 2, 3
    assert value.global_avg == 4.0 and value.count == 4
    value.update(torch.tensor(8.0), n=4)
    assert value.total == 48.0 and value.count == 8


def test_meter_group_postfix_and_eta():
    meters = MeterGroup(window_size=2)
    meters.update({"loss": torch.tensor(0.9)}, iter_time=0.5)
    meters.update(loss=0.7, iter_time=0.3)
    assert "loss" in meters and meters["loss"].median == pytest.approx(0.8)
    assert meters.medians() == pytest.approx({"loss": 0.8, "iter_time": 0.4})
    assert meters.averages() == pytest.approx({"loss": 0.8, "iter_time": 0.4})
    assert meters.postfix(".2f") == {"loss": "0.80", "iter_time": "0.40"}
    assert meters.eta_seconds(100) == pytest.approx(40.0)
    assert meters.eta_seconds(0) == 0.0 and MeterGroup().eta_seconds(10) == 0.0
