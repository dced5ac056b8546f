"""Every shipped config still resolves to the optimizer, learning-rate curve and transforms it had before the
recipe options (AdamW, cosine / linear, backbone lr multiplier, accumulation, data.augment) existed: the new
switches are off by default. tests/fixtures/recipes_baseline.json was written by the earlier code
(``python tests/fixtures/recipes_baseline.py`` at that commit); here the current code paths build the same things.
"""

from __future__ import annotations

import importlib.util
import json
import math
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from detector.config import config_to_dict, load_config
from detector.data.build import build_transforms_for
from detector.engine.recipe import build_lr_scheduler, build_training_optimizer
from detector.engine.trainer import schedule_length
from detector.models import build_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("recipes_baseline", FIXTURES / "recipes_baseline.py")
baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baseline)
RECORDED = json.loads((FIXTURES / "recipes_baseline.json").read_text())
CONFIGS = sorted(RECORDED["configs"])


@lru_cache(maxsize=None)
def tiny_config(path: str):
    return load_config(baseline.REPO / path, baseline.TINY)


def test_fixture_covers_every_shipped_config():
    assert CONFIGS == [str(p.relative_to(baseline.REPO)) for p in baseline.config_paths()]
    assert len(CONFIGS) > 40


_BUILT: dict[str, dict] = {}  # configs whose relevant sections agree (most differ in a loss scalar) share one


def built_once(cfg, sections: tuple[str, ...], build) -> dict:
    resolved = config_to_dict(cfg)
    key = json.dumps([sections, {name: resolved[name] for name in sections}], sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = build(cfg)
    return _BUILT[key]


def optimizer_and_schedule(cfg) -> dict:
    with torch.device("meta"):  # as the fixture: the module structure decides the groups
        model = build_model(cfg)
    optimizer = build_training_optimizer(cfg, model)
    described = baseline.describe_optimizer(optimizer)  # before the scheduler sets the warm-up lr, as the fixture
    length = schedule_length(cfg, RECORDED["iters_per_epoch"])
    scheduler = build_lr_scheduler(cfg, optimizer, length.total_iters, length.milestones, length.warmup_iters)
    return {"optimizer": described, "total_iters": length.total_iters,
            "lr_at": lambda t: scheduler.base_lrs[0] * scheduler.lr_factor(t)}


@pytest.mark.parametrize("path", CONFIGS)
def test_optimizer_and_lr_curve_unchanged(path):
    expected = RECORDED["configs"][path]
    actual = built_once(tiny_config(path), ("model", "schedule", "runtime"),
                        optimizer_and_schedule)
    assert actual["optimizer"] == expected["optimizer"]
    assert actual["total_iters"] == expected["total_iters"]
    for iteration, lr in expected["lr"].items():
        assert actual["lr_at"](int(iteration)) == lr, f"iteration {iteration}"  # the same arithmetic: bit-equal


def transform_outputs(cfg) -> dict:
    train, val = build_transforms_for(cfg, "train"), build_transforms_for(cfg, "val")
    return {"train_transform": repr(train), "val_transform": repr(val),
            "train_outputs": baseline.transform_outputs(train)}


@pytest.mark.parametrize("path", CONFIGS)
def test_transforms_unchanged(path):
    expected = RECORDED["configs"][path]
    actual = built_once(tiny_config(path), ("data",), transform_outputs)
    assert actual["train_transform"] == expected["train_transform"]
    assert actual["val_transform"] == expected["val_transform"]
    for got, want in zip(actual["train_outputs"], expected["train_outputs"], strict=True):
        assert got["size"] == want["size"]
        assert got["boxes"] == want["boxes"] and got["ignore_boxes"] == want["ignore_boxes"]
        assert math.isclose(got["image_sum"], want["image_sum"], rel_tol=1e-9)  # resampling kernels: same CPU
