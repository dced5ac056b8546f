"""Self-describing checkpoints: the metadata training writes, tools/eval.py from a checkpoint alone, checkpoints
written before metadata existed, and 1-process vs 2-process evaluation of the same checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector import __version__
from detector.config import load_config
from detector.predict.checkpoints import config_from_meta, read_checkpoint_meta
from detector.runtime.checkpoint import CheckpointError, load_checkpoint

from .conftest import ROOT

EVAL_OPTS = ["--no-progress"]


COMMANDS = {"publish_checkpoint": "publish", "convert_dataset": "convert"}  # tools/<name>.py -> detector/cli module


def load_tool(name: str):
    """The command behind tools/<name>.py (and ``focaldet <command>``), a module of detector/cli."""
    return importlib.import_module(f"detector.cli.{COMMANDS.get(name, name)}")


def test_training_checkpoints_carry_their_metadata(trained):
    state = load_checkpoint(trained.checkpoint)
    meta = read_checkpoint_meta(state, trained.checkpoint)
    annotations = json.loads((trained.root / "syn" / "annotations" / "instances_train.json").read_text())
    categories = sorted(annotations["categories"], key=lambda cat: cat["id"])
    assert meta["class_names"] == [cat["name"] for cat in categories]
    assert meta["category_ids"] == [cat["id"] for cat in categories] != list(range(len(categories)))
    assert (meta["mean"], meta["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert (meta["test_min_size"], meta["test_max_size"], meta["size_divisor"]) == (64, 64, 32)
    assert (meta["focaldet_version"], meta["model_type"], meta["format"]) == (__version__, "retinanet", 1)
    assert config_from_meta(meta, trained.checkpoint) == load_config(trained.config)  # the resolved config


def test_eval_from_the_checkpoint_alone_equals_config_and_checkpoint(trained, tmp_path):
    eval_tool = load_tool("eval")
    outputs = {}
    for name, head in (("alone", []), ("with_config", [str(trained.config)])):
        metrics, results = tmp_path / f"{name}_metrics.json", tmp_path / f"{name}_results.json"
        assert eval_tool.main([*head, str(trained.checkpoint), "--metrics-out", str(metrics), "--out", str(results),
                               *EVAL_OPTS]) == 0
        outputs[name] = (json.loads(metrics.read_text()), json.loads(results.read_text()))
    assert outputs["alone"] == outputs["with_config"] and len(outputs["alone"][1]) > 0
    # --results with a checkpoint for the config: the same metrics from the written detections
    rescored = tmp_path / "rescored.json"
    assert eval_tool.main([str(trained.checkpoint), "--results", str(tmp_path / "alone_results.json"),
                           "--metrics-out", str(rescored)]) == 0
    assert json.loads(rescored.read_text()) == outputs["alone"][0]


def test_checkpoints_without_metadata_need_their_config(trained, tmp_path, capsys):
    state = load_checkpoint(trained.checkpoint)
    old = tmp_path / "old.pt"
    torch.save({key: value for key, value in state.items() if key != "meta"}, old)
    eval_tool = load_tool("eval")
    assert eval_tool.main([str(old), *EVAL_OPTS]) == 1
    assert f"checkpoint {old} carries no config" in capsys.readouterr().err
    metrics = tmp_path / "metrics.json"
    assert eval_tool.main([str(trained.config), str(old), "--metrics-out", str(metrics), *EVAL_OPTS]) == 0
    from detector import Detector
    with pytest.raises(CheckpointError, match="carries no config"):
        Detector.from_checkpoint(old, device="cpu")
    det = Detector(trained.config, old, device="cpu")  # class names from the config's annotation files
    assert det.class_names == Detector.from_checkpoint(trained.checkpoint, device="cpu").class_names


def test_one_and_two_process_evaluation_give_identical_metrics(trained_head, tmp_path):
    """At test size 48 (longer side at most 64) the val images pad to 48 x 48, 48 x 64 and 64 x 48 (size_divisor
    16); 9 images at 4 per batch are batched differently by 1 process and by 2 (shards of 5 + 4): with each image
    padded to its own shape, the detections and metrics are the same, for the RetinaNet, ATSS and GFL quick
    starts. (Batched as they come, padded to their batch's largest image, some scores move by more than 1e-5 and
    the metrics differ.)"""
    opts = ["--opts", "data.test_min_size=48", "data.size_divisor=16", "data.test_batch_size=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {}
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    for processes in (1, 2):
        metrics, results = tmp_path / f"metrics_{processes}.json", tmp_path / f"results_{processes}.json"
        command = [*launcher, "--standalone", "--nproc_per_node", str(processes), "tools/eval.py",
                   str(trained_head.checkpoint), "--metrics-out", str(metrics), "--out", str(results), "--no-progress",
                   *opts]
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[processes] = (json.loads(metrics.read_text()), json.loads(results.read_text()))
    (metrics_1, results_1), (metrics_2, results_2) = outputs[1], outputs[2]
    assert metrics_1 == metrics_2 and metrics_1["AP50"] > 0
    assert [(r["image_id"], r["category_id"]) for r in results_1] == \
        [(r["image_id"], r["category_id"]) for r in results_2] and len(results_1) > 100
    torch.testing.assert_close(torch.tensor([r["score"] for r in results_2]),
                               torch.tensor([r["score"] for r in results_1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor([r["bbox"] for r in results_2]),
                               torch.tensor([r["bbox"] for r in results_1]), atol=0.011, rtol=0)
