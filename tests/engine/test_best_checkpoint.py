"""evaluation.save_best and runtime.early_stop_patience (detector.engine.best_checkpoint): with scripted
evaluation results, best.pt holds the checkpoint of the best evaluation, metrics.jsonl records it, the run stops
after `patience` evaluations without improvement, and a resumed run keeps the tracker's state."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from detector.config import load_config
from detector.engine import trainer as trainer_module
from detector.engine.best_checkpoint import BestTracker
from detector.engine.trainer import Trainer
from detector.runtime.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"


def test_tracker_by_hand():
    tracker = BestTracker("AP", patience=2)
    seen = [tracker.observe(i, {"AP": v}) for i, v in [(10, 0.2), (20, 0.1), (30, 0.2), (40, 0.3), (50, math.nan)]]
    assert seen == [True, False, False, True, False]  # equal is not better; NaN never is
    assert (tracker.best_value, tracker.best_iteration, tracker.num_bad_evaluations) == (0.3, 40, 1)
    assert not tracker.should_stop
    tracker.observe(60, {"AP": 0.29})
    assert tracker.should_stop and "2 evaluations without a better AP than 0.3000 (iteration 40)" in \
        tracker.stop_message()
    restored = BestTracker("AP", patience=2)
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == tracker.state_dict()
    other = BestTracker("AP50")
    other.load_state_dict(tracker.state_dict())  # watched another metric: starts afresh
    assert other.best_value == -math.inf
    with pytest.raises(KeyError, match="no metric 'AP50' .*it has AP"):
        other.observe(1, {"AP": 0.1})


@pytest.mark.parametrize("opts, message", [
    (["runtime.early_stop_patience=2"], "needs evaluation.save_best"),
    (["evaluation.save_best=APr"], "is an LVIS metric"),
    (["evaluation.save_best=AP", "runtime.early_stop_patience=0"], "early_stop_patience must be >= 1"),
])
def test_bad_settings(opts, message):
    with pytest.raises(ValueError, match=message):
        load_config(CONFIG, opts)


def tiny_opts(root: Path, *extra: str) -> list[str]:
    return [f"data.synthetic.root={root}", "data.synthetic.num_train=8", "data.synthetic.num_val=4",
            "data.synthetic.image_size=64", "data.synthetic.max_objects=2",
            f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.val.ann_file={root}/annotations/instances_val.json", f"data.val.img_dir={root}/val",
            "data.min_size=[64]", "data.max_size=64", "data.batch_size=4", "data.num_workers=0",
            "model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32",
            "schedule.iters=20", "schedule.steps=[15]", "schedule.warmup_iters=1", "runtime.log_interval=1",
            "runtime.eval_interval=1", "evaluation.save_best=AP", *extra]


@pytest.fixture
def scripted(monkeypatch):
    """evaluate_model returns the next AP of the list given (and records the iteration it was called at)."""
    calls = []

    def install(values):
        def fake_evaluate(cfg, model, device, **kwargs):
            calls.append(len(calls))
            return {"AP": values[len(calls) - 1], "AP50": 0.0}
        monkeypatch.setattr(trainer_module, "evaluate_model", fake_evaluate)
        return calls
    return install


def records(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def test_best_checkpoint_and_early_stop(tmp_path, scripted, caplog):
    calls = scripted([0.1, 0.3, 0.2, 0.25, 0.3, 0.9])
    work_dir = tmp_path / "run"
    trainer = Trainer(load_config(CONFIG, tiny_opts(tmp_path / "syn", "runtime.early_stop_patience=3")), work_dir,
                      progress=False)
    with caplog.at_level(logging.WARNING, logger="detector.engine"):
        trainer.fit()
    assert len(calls) == 5 and trainer.iteration == 5  # 0.2, 0.25, 0.3 after the best 0.3: stop, no end evaluation
    assert "3 evaluations without a better AP than 0.3000 (iteration 2); stopping" in caplog.text
    best = load_checkpoint(work_dir / "checkpoints" / "best.pt")
    assert best["iteration"] == 2 and best["best"]["best_value"] == 0.3
    last = load_checkpoint(work_dir / "checkpoints" / "last.pt")
    assert last["iteration"] == 5 and last["best"]["num_bad_evaluations"] == 3
    best_rows = [(r["iter"], r["best/AP"], r["best/iter"]) for r in records(work_dir) if "best/AP" in r]
    assert best_rows == [(1, 0.1, 1), (2, 0.3, 2), (3, 0.3, 2), (4, 0.3, 2), (5, 0.3, 2)]


def test_resume_keeps_the_best_so_far(tmp_path, scripted):
    calls = scripted([0.5, 0.1, 0.4, 0.6])
    opts = tiny_opts(tmp_path / "syn", "schedule.max_iters=2")  # evaluations at 1 and at the end, 2
    Trainer(load_config(CONFIG, opts), tmp_path / "run", progress=False).fit()
    resumed = Trainer(load_config(CONFIG, [*opts, "schedule.max_iters=4"]), tmp_path / "run", resume=True,
                      progress=False)
    assert (resumed.best.best_value, resumed.best.best_iteration, resumed.best.num_bad_evaluations) == (0.5, 1, 1)
    resumed.fit()
    assert len(calls) == 4  # at 3 and at the end, 4
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["iteration"] == 4  # 0.6 beat 0.5, not 0.4
