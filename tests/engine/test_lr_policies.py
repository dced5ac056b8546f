"""Cosine and linear schedules with warm-up and a minimum lr, constant warm-up, per-group base lrs (a backbone
multiplier), resume, and the schedule keys' validation. Expected values are written out from the equations in
the module docstring of detector.engine.lr_schedule, iteration by iteration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from detector.config import ConfigError, load_config
from detector.engine.lr_schedule import WarmupLR
from detector.engine.recipe import build_lr_scheduler, build_training_optimizer
from detector.models import build_model

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def make(base_lrs=(0.2,), **kwargs) -> tuple[torch.optim.Optimizer, WarmupLR]:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=base_lrs[0])
    return optimizer, WarmupLR(optimizer, **kwargs)


def lrs_while_stepping(optimizer, scheduler, num_iters) -> list[list[float]]:
    """The lr of every group during iterations 0 .. num_iters - 1 (the optimizer's value when it steps)."""
    seen = []
    for _ in range(num_iters):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_with_linear_warmup_and_min_lr_sample_by_sample():
    T, t_w, w, r, base = 20, 4, 0.1, 0.05, 0.2
    optimizer, scheduler = make(policy="cosine", total_iters=T, warmup_iters=t_w, warmup_factor=w, min_lr_ratio=r)
    for t, (lr,) in enumerate(lrs_while_stepping(optimizer, scheduler, T)):
        warmup = w + (1 - w) * t / t_w if t < t_w else 1.0
        cosine = r + (1 - r) * (1 + math.cos(math.pi * t / T)) / 2
        assert lr == pytest.approx(base * warmup * cosine, rel=1e-12), t
    # a few values worked by hand: t=0: 0.2 * 0.1 * 1; t=2: 0.2 * 0.55 * (0.05 + 0.95 * (1 + cos(pi/10)) / 2);
    # t=10 (half-way): 0.2 * (0.05 + 0.95 * 0.5) = 0.105; t=T (after the end): 0.2 * 0.05 = 0.01
    assert scheduler.lr_factor(0) * base == pytest.approx(0.02)
    assert scheduler.lr_factor(2) * base == pytest.approx(0.2 * 0.55 * (0.05 + 0.95 * 0.9755282581475768))
    assert scheduler.lr_factor(10) * base == pytest.approx(0.105)
    assert scheduler.lr_factor(T) * base == pytest.approx(0.01)
    assert scheduler.lr_factor(T + 5) * base == pytest.approx(0.01)  # stays at the minimum past the end


def test_linear_decay_with_constant_warmup():
    T, t_w, w, r, base = 10, 3, 0.25, 0.2, 0.2
    optimizer, scheduler = make(policy="linear", total_iters=T, warmup_iters=t_w, warmup_factor=w, min_lr_ratio=r,
                                warmup_method="constant")
    seen = [lr for (lr,) in lrs_while_stepping(optimizer, scheduler, T)]
    expected = [base * (w if t < t_w else 1.0) * (r + (1 - r) * (1 - t / T)) for t in range(T)]
    assert seen == pytest.approx(expected, rel=1e-12)
    # by hand: t=0: 0.2 * 0.25 * 1 = 0.05; t=2: 0.2 * 0.25 * (0.2 + 0.8 * 0.8) = 0.042; t=3 (warm-up over): 0.2 *
    # (0.2 + 0.8 * 0.7) = 0.152; t=5: 0.2 * 0.6 = 0.12; t=9: 0.2 * 0.28 = 0.056
    assert [seen[t] for t in (0, 2, 3, 5, 9)] == pytest.approx([0.05, 0.042, 0.152, 0.12, 0.056])


def test_step_policy_with_constant_warmup():
    optimizer, scheduler = make(policy="step", milestones=[5, 8], gamma=0.1, warmup_iters=3, warmup_factor=0.5,
                                warmup_method="constant")
    seen = [lr for (lr,) in lrs_while_stepping(optimizer, scheduler, 10)]
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.2, 0.2, 0.02, 0.02, 0.02, 0.002, 0.002], rel=1e-12)


def test_each_group_keeps_its_base_lr_ratio():
    """A backbone group at a tenth of the lr stays at a tenth through warm-up and decay."""
    optimizer, scheduler = make(base_lrs=(0.2, 0.02), policy="cosine", total_iters=12, warmup_iters=3,
                                warmup_factor=0.01, min_lr_ratio=0.1)
    for t, (head, backbone) in enumerate(lrs_while_stepping(optimizer, scheduler, 12)):
        assert backbone == pytest.approx(head / 10, rel=1e-12), t
        assert head == pytest.approx(0.2 * scheduler.lr_factor(t), rel=1e-12)


@pytest.mark.parametrize("policy", ["cosine", "linear"])
def test_resume_continues_the_curve(policy):
    kwargs = dict(policy=policy, total_iters=15, warmup_iters=4, warmup_factor=0.1, min_lr_ratio=0.1)
    optimizer, scheduler = make(**kwargs)
    full = lrs_while_stepping(optimizer, scheduler, 15)
    optimizer, scheduler = make(**kwargs)
    lrs_while_stepping(optimizer, scheduler, 6)
    state = scheduler.state_dict()
    assert all(isinstance(v, (int, float, str, list, bool, type(None))) for v in state.values())
    resumed_optimizer, resumed = make(**kwargs)
    resumed.load_state_dict(state)
    assert lrs_while_stepping(resumed_optimizer, resumed, 9) == full[6:]


def test_scheduler_arguments_are_checked():
    for kwargs, message in [(dict(policy="exp"), "policy"), (dict(warmup_method="cosine"), "warmup_method"),
                            (dict(total_iters=0), "total_iters"), (dict(min_lr_ratio=1.5), "min_lr_ratio")]:
        with pytest.raises(ValueError, match=message):
            make(**kwargs)


def test_config_builds_the_schedule_and_backbone_groups():
    cfg = load_config(QUICKSTART, ["schedule.policy=cosine", "schedule.min_lr_ratio=0.01", "schedule.warmup_iters=10",
                                   "schedule.backbone_lr_mult=0.1", "schedule.no_decay_norm_bias=true"])
    model = build_model(cfg)
    optimizer = build_training_optimizer(cfg, model)
    assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay", "backbone_decay",
                                                           "backbone_no_decay"]
    backbone = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    for group in optimizer.param_groups:
        assert all((id(p) in backbone) == group["name"].startswith("backbone") for p in group["params"])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.02, 0.002, 0.002])
    scheduler = build_lr_scheduler(cfg, optimizer, total_iters=1300, milestones=[], warmup_iters=10)
    T = 1300
    for t in (0, 5, 10, 650, 1299):
        warmup = 0.001 + 0.999 * t / 10 if t < 10 else 1.0
        factor = warmup * (0.01 + 0.99 * (1 + math.cos(math.pi * t / T)) / 2)
        assert [0.02 * factor, 0.002 * factor] == pytest.approx(
            [scheduler.base_lrs[0] * scheduler.lr_factor(t), scheduler.base_lrs[2] * scheduler.lr_factor(t)])


@pytest.mark.parametrize("override, message", [
    ("schedule.policy=exponential", "schedule.policy"),
    ("schedule.warmup_method=cosine", "schedule.warmup_method"),
    ("schedule.min_lr_ratio=0.1", "min_lr_ratio applies to policy cosine and linear"),
    ("schedule.optimizer=adam", "schedule.optimizer"),
    ("schedule.betas=[0.9,1.0]", "schedule.betas must be two numbers in"),
    ("schedule.betas=[0.9]", "schedule.betas must be two numbers in"),
    ("schedule.eps=0", "schedule.eps must be > 0"),
    ("schedule.backbone_lr_mult=0", "schedule.backbone_lr_mult must be > 0"),
    ("schedule.accumulate=0", "schedule.accumulate must be >= 1"),
    ("schedule.accumulate=3", r"data.batch_size \(4\) must be divisible by schedule.accumulate \(3\)"),
    ("schedule.accumulate_exact=1", "schedule.accumulate_exact"),
])
def test_schedule_keys_are_validated(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(QUICKSTART, [override])
    assert "\n" not in str(error.value) and override.split("=")[0] in str(error.value)


def test_min_lr_ratio_range_with_cosine():
    with pytest.raises(ConfigError, match=r"schedule.min_lr_ratio must be in \[0, 1\]"):
        load_config(QUICKSTART, ["schedule.policy=cosine", "schedule.min_lr_ratio=1.5"])
    assert load_config(QUICKSTART, ["schedule.policy=linear", "schedule.min_lr_ratio=1.0"]).schedule.min_lr_ratio == 1
