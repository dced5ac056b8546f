"""runtime.ema (detector.engine.ema): the average's arithmetic against hand-computed values, the ramp, integer
buffers, and in training: evaluation runs on the average, the checkpoint's ``ema`` entry is a state dict of the
model's keys that publish_checkpoint's reader (model_state_from_checkpoint) accepts and the model loads, and
tools/eval.py, tools/predict.py and Detector use it unless told to take the raw weights.
Exact resume with EMA is in test_trainer_resume.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from detector.cli import eval as eval_cli
from detector.cli import export as export_cli
from detector.cli import predict as predict_cli
from detector.cli.common import load_trained_model
from detector.config import load_config
from detector.engine import trainer as trainer_module
from detector.engine.ema import ModelEMA
from detector.engine.trainer import Trainer
from detector.models import build_model
from detector.predict import Detector
from detector.runtime.checkpoint import load_checkpoint
from detector.runtime.model_state import model_state_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"
tool_args = {eval_cli: [], predict_cli: ["image.jpg", "--out-dir", "out"], export_cli: ["--format", "onnx"]}


class Tiny(nn.Module):
    def __init__(self, weight: float, bias: float) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.norm = nn.BatchNorm1d(1)
        with torch.no_grad():
            self.linear.weight.fill_(weight)
            self.linear.bias.fill_(bias)


def test_constant_decay_by_hand():
    model = Tiny(1.0, -2.0)
    ema = ModelEMA(model, decay=0.75, warmup=0)
    with torch.no_grad():
        model.linear.weight.fill_(5.0)
        model.linear.bias.fill_(2.0)
        model.norm.running_mean.fill_(4.0)
        model.norm.num_batches_tracked.fill_(7)
    ema.update(model)  # 0.75 * old + 0.25 * new
    assert float(ema.module.linear.weight) == 0.75 * 1.0 + 0.25 * 5.0 == 2.0
    assert float(ema.module.linear.bias) == 0.75 * -2.0 + 0.25 * 2.0 == -1.0
    assert float(ema.module.norm.running_mean) == 1.0  # 0.75 * 0 + 0.25 * 4
    assert int(ema.module.norm.num_batches_tracked) == 7  # integers are copied
    ema.update(model)
    assert float(ema.module.linear.weight) == 0.75 * 2.0 + 0.25 * 5.0 == 2.75
    assert ema.updates == 2
    assert float(model.linear.weight.detach()) == 5.0 and not ema.module.linear.weight.requires_grad


def test_warmup_ramp_by_hand():
    model = Tiny(0.0, 0.0)
    ema = ModelEMA(model, decay=0.9, warmup=3)
    expected = 0.0
    for t, target in enumerate([1.0, 3.0, -2.0, 4.0, 0.5], start=1):
        with torch.no_grad():
            model.linear.weight.fill_(target)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-t / 3))  # d_1 = 0.9 * (1 - e^(-1/3)) = 0.2551...
        expected = d * expected + (1 - d) * target
        assert float(ema.module.linear.weight) == pytest.approx(expected, rel=1e-6), t
    assert ema.decay_at(1) == pytest.approx(0.255122, abs=1e-6)  # 0.9 * (1 - 0.716531)
    assert ema.decay_at(1000) == pytest.approx(0.9)


def test_bad_settings():
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        ModelEMA(Tiny(0, 0), decay=1.0)
    with pytest.raises(ValueError, match="runtime.ema needs decay"):
        load_config(CONFIG, ["runtime.ema.decay=-0.1"])


def tiny_opts(root: Path, *extra: str) -> list[str]:
    return [f"data.synthetic.root={root}", "data.synthetic.num_train=8", "data.synthetic.num_val=4",
            "data.synthetic.image_size=64", "data.synthetic.max_objects=2",
            f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.val.ann_file={root}/annotations/instances_val.json", f"data.val.img_dir={root}/val",
            "data.min_size=[64]", "data.max_size=64", "data.test_min_size=64", "data.test_max_size=64",
            "data.batch_size=4", "data.num_workers=0", "model.head.num_convs=1", "model.head.feat_channels=32",
            "model.neck.out_channels=32", "schedule.iters=20", "schedule.steps=[15]", "schedule.warmup_iters=1",
            "runtime.log_interval=1", *extra]


def test_training_evaluates_and_checkpoints_the_average(tmp_path, monkeypatch):
    evaluated = []

    def fake_evaluate(cfg, model, device, **kwargs):
        evaluated.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"AP": 0.0}
    monkeypatch.setattr(trainer_module, "evaluate_model", fake_evaluate)
    cfg = load_config(CONFIG, tiny_opts(tmp_path / "syn", "schedule.max_iters=3", "runtime.ema.decay=0.5",
                                        "runtime.ema.warmup=0"))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    steps = []
    original_step = trainer.train_step

    def recording_step(images, targets):
        result = original_step(images, targets)
        steps.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return result
    trainer.train_step = recording_step
    trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["ema"]["updates"] == 3 and state["ema"]["decay"] == 0.5
    key = "head.cls_logits.weight"
    by_hand = initial[key]
    for weights in steps:  # decay 0.5 from the initial weights, one update per step
        by_hand = 0.5 * by_hand + 0.5 * weights[key]
    torch.testing.assert_close(state["ema"]["model"][key], by_hand)
    assert not torch.equal(state["ema"]["model"][key], state["model"][key])
    assert torch.equal(evaluated[-1][key], state["ema"]["model"][key])  # the end-of-run evaluation saw the average
    weights = model_state_from_checkpoint(state["ema"], "last.pt (ema)")  # what publish_checkpoint reads
    build_model(cfg).load_state_dict(weights)  # strict: exactly the model's keys

    # Inference takes the average by default, as training evaluated it, and the raw weights when told so.
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pt")
    for ema, expected in ((True, state["ema"]["model"]), (False, state["model"])):
        for model in (load_trained_model(cfg, checkpoint, prefer_ema=ema), Detector.from_checkpoint(checkpoint,
                                                                                                    ema=ema).model):
            assert torch.equal(model.state_dict()[key], expected[key]), ema
    for tool in (eval_cli, predict_cli, export_cli):
        assert not tool.parse_args([checkpoint, *tool_args[tool]]).raw_weights
        assert tool.parse_args([checkpoint, *tool_args[tool], "--raw-weights"]).raw_weights


def test_the_average_leaves_the_training_trajectory_as_it_was(tmp_path):
    # scripts/recipe_table.py scores a run's raw weights as the run without EMA: that needs bit-equal weights.
    opts = tiny_opts(tmp_path / "syn", "schedule.max_iters=3", "runtime.eval_at_end=false")
    plain = Trainer(load_config(CONFIG, opts), tmp_path / "plain", progress=False)
    plain.fit()
    averaged = Trainer(load_config(CONFIG, [*opts, "runtime.ema.decay=0.9", "runtime.ema.warmup=0"]),
                       tmp_path / "ema", progress=False)
    averaged.fit()
    assert averaged.ema.updates == 3
    for key, value in plain.model.state_dict().items():
        assert torch.equal(averaged.model.state_dict()[key], value), key


def test_resuming_a_checkpoint_without_ema_starts_the_average_from_it(tmp_path, caplog):
    opts = tiny_opts(tmp_path / "syn", "schedule.max_iters=1", "runtime.eval_at_end=false")
    Trainer(load_config(CONFIG, opts), tmp_path / "run", progress=False).fit()
    resumed = Trainer(load_config(CONFIG, [*opts, "schedule.max_iters=2", "runtime.ema.decay=0.9"]), tmp_path / "run",
                      resume=True, progress=False)
    assert "holds no EMA weights" in caplog.text and resumed.ema.updates == 0
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(resumed.ema.module.state_dict()[key], value), key
