"""schedule.warmup_epochs: converted with the sampler's batches per epoch (the resampled epoch under RFS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import ConfigError, load_config
from detector.engine.trainer import Trainer, schedule_length

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_conversion_to_iterations():
    cfg = load_config(ROOT / "configs" / "efl" / "efl_r50_fpn_2x_lvis_rfs.yaml")
    assert (cfg.schedule.warmup_epochs, cfg.schedule.warmup_iters) == (1, 0)
    length = schedule_length(cfg, iters_per_epoch=37)
    # 24 epochs of 37 iterations, steps at epochs 16 and 22, one epoch of warm-up.
    assert (length.total_iters, length.milestones, length.warmup_iters) == (888, [592, 814], 37)
    # An iteration-based schedule converts warm-up epochs with the sampler's epoch just the same.
    cfg = load_config(QUICKSTART, ["schedule.warmup_iters=0", "schedule.warmup_epochs=2"])
    assert schedule_length(cfg, iters_per_epoch=9).warmup_iters == 18
    # Without warmup_epochs the iterations are taken as they are.
    assert schedule_length(load_config(QUICKSTART), iters_per_epoch=9).warmup_iters == 100


def test_warmup_epochs_and_iters_are_exclusive():
    with pytest.raises(ConfigError, match=r"schedule\.warmup_epochs.*schedule\.warmup_iters.*quickstart"):
        load_config(QUICKSTART, ["schedule.warmup_epochs=1"])  # quickstart sets warmup_iters: 100
    with pytest.raises(ConfigError, match="warmup_epochs >= 0"):
        load_config(QUICKSTART, ["schedule.warmup_iters=0", "schedule.warmup_epochs=-1"])


def write_tiny_coco(root: Path) -> list[str]:
    """6 images of 64 x 64 px; category 1 in image 0 only (f = 1/6), category 2 in all 6 (f = 1).

    With t = 0.3: r_1 = sqrt(0.3 * 6) = sqrt(1.8) = 1.342, r_2 = 1, so image 0 has r = 1.342, the others 1.
    ceil rounding: 2 + 5 = 7 images an epoch, 7 iterations at batch 1 (stochastic: round(6.342) = 6)."""
    root.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, 7):
        Image.fromarray(np.full((64, 64, 3), 40 * image_id, np.uint8)).save(root / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 64, "width": 64})
        for cat in ([1, 2] if image_id == 1 else [2]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [8, 8, 32, 32], "area": 1024, "iscrowd": 0})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return [f"data.train.ann_file={root / 'ann.json'}", f"data.train.img_dir={root}", "data.train.filter_empty=true",
            "data.train.repeat_threshold=0.3", "data.synthetic.enabled=false", "model.num_classes=2",
            "data.batch_size=1", "data.num_workers=0", "data.min_size=[64]", "data.max_size=64",
            "model.neck.out_channels=32", "model.head.num_convs=1", "model.head.feat_channels=32",
            "model.head.norm=null"]


def test_trainer_warms_up_for_one_resampled_epoch(tmp_path):
    torch.set_num_threads(1)
    opts = write_tiny_coco(tmp_path / "data") + [
        "data.train.repeat_rounding=ceil", "schedule.epochs=3", "schedule.iters=null", "schedule.steps=[2]",
        "schedule.lr=0.02", "schedule.warmup_iters=0", "schedule.warmup_epochs=1", "schedule.warmup_factor=0.001",
        "schedule.max_iters=3", "runtime.log_interval=1", "runtime.eval_at_end=false", 'runtime.amp="off"',
        "runtime.channels_last=false", "runtime.checkpoint_interval=0"]
    trainer = Trainer(load_config(QUICKSTART, opts), tmp_path / "work", progress=False)
    assert trainer.sampler.num_batches_per_epoch == 7
    assert trainer.length.warmup_iters == 7 and trainer.length.milestones == [14] and trainer.length.total_iters == 21
    # lr(t) = 0.02 * (0.001 + 0.999 * t / 7) for t < 7, then 0.02, and 0.002 from the step at iteration 14:
    #   t = 0: 2e-5; t = 3: 0.02 * (0.001 + 0.428142857) = 0.00858285714; t = 6: 0.02 * 0.857285714 = 0.0171457143
    hand = {0: 2e-5, 3: 0.00858285714, 6: 0.0171457143, 7: 0.02, 13: 0.02, 14: 0.002, 20: 0.002}
    for iteration, lr in hand.items():
        assert 0.02 * trainer.scheduler.lr_factor(iteration) == pytest.approx(lr, rel=1e-8), iteration
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2e-5, rel=1e-8)
    trainer.fit()  # 3 iterations; metrics.jsonl logs the lr of the next iteration after each step
    logged = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    lrs = {row["iter"]: row["train/lr"] for row in logged if "train/lr" in row}
    # t = 1: 0.02 * (0.001 + 0.999 / 7) = 0.00287428571; t = 2: 0.02 * (0.001 + 1.998 / 7) = 0.00572857143
    assert lrs == pytest.approx({1: 0.00287428571, 2: 0.00572857143, 3: 0.00858285714}, rel=1e-8)
