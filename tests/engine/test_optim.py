"""Tests for detector.engine.optim: parameter groups, SGD construction, gradient clipping."""

import math

import pytest
import torch
from torch import nn

from detector.engine.optim import (OptimizerStateMismatchError, build_optimizer, build_param_groups, clip_gradients,
                                   load_optimizer_state)
from detector.runtime.checkpoint import CheckpointError


class TinyNet(nn.Module):
    """Conv (with bias) + BN, conv (no bias) + GN, a LayerNorm, a linear head, and a frozen stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, bias=True)
        self.stem.requires_grad_(False)  # frozen: must be excluded everywhere
        self.conv1 = nn.Conv2d(4, 8, 3, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)


def _ids(params):
    return {id(p) for p in params}


def _group(groups, name):
    matches = [g for g in groups if g["name"] == name]
    assert len(matches) == 1
    return matches[0]


def test_no_decay_on_norms_and_biases():
    model = TinyNet()
    groups = build_param_groups(model, weight_decay=1e-4, no_decay_norm_bias=True)
    decay, no_decay = _group(groups, "decay"), _group(groups, "no_decay")
    assert decay["weight_decay"] == 1e-4
    assert no_decay["weight_decay"] == 0.0
    expected_no_decay = [
        model.conv1.bias, model.bn.weight, model.bn.bias, model.gn.weight, model.gn.bias,
        model.ln.weight, model.ln.bias, model.head.bias,
    ]
    expected_decay = [model.conv1.weight, model.conv2.weight, model.head.weight]
    assert _ids(no_decay["params"]) == _ids(expected_no_decay)
    assert _ids(decay["params"]) == _ids(expected_decay)


def test_every_trainable_param_exactly_once_and_frozen_excluded():
    model = TinyNet()
    for flag in (True, False):
        groups = build_param_groups(model, weight_decay=5e-4, no_decay_norm_bias=flag)
        all_params = [p for g in groups for p in g["params"]]
        assert len(all_params) == len(_ids(all_params))  # no duplicates across or within groups
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert _ids(all_params) == _ids(trainable)
        assert not _ids(all_params) & _ids(model.stem.parameters())


def test_single_group_when_not_exempting():
    groups = build_param_groups(TinyNet(), weight_decay=1e-4, no_decay_norm_bias=False)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4


def test_sync_batchnorm_detected_by_type_and_shared_param_counted_once():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.SyncBatchNorm(4), nn.Linear(4, 4, bias=False))
    tied = nn.Linear(4, 4, bias=False)
    tied.weight = model[2].weight  # shared parameter
    wrapper = nn.ModuleDict({"body": model, "tied": tied})
    groups = build_param_groups(wrapper, weight_decay=1e-4, no_decay_norm_bias=True)
    no_decay = _group(groups, "no_decay")
    assert _ids(no_decay["params"]) == _ids([model[1].weight, model[1].bias])
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == 4 and len(_ids(all_params)) == 4


def test_no_trainable_params_raises():
    with pytest.raises(ValueError, match="no trainable"):
        build_param_groups(nn.Linear(2, 2).requires_grad_(False), weight_decay=0.0, no_decay_norm_bias=True)


def test_build_optimizer_settings_and_step():
    model = TinyNet()
    optimizer = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4, no_decay_norm_bias=True,
                                nesterov=True)
    assert isinstance(optimizer, torch.optim.SGD)
    for group in optimizer.param_groups:
        assert group["lr"] == 0.01 and group["momentum"] == 0.9 and group["nesterov"] is True
        assert group["foreach"] is True
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-4]
    before = model.conv1.weight.detach().clone()
    frozen_before = model.stem.weight.detach().clone()
    x = torch.randn(2, 3, 12, 12)
    out = model.conv2(model.bn(model.conv1(model.stem(x))))
    model.head(model.ln(model.gn(out).mean(dim=(2, 3)))).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.conv1.weight)
    assert torch.equal(frozen_before, model.stem.weight)


def test_build_optimizer_validation():
    with pytest.raises(ValueError):
        build_optimizer(TinyNet(), lr=0.01, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError):
        build_optimizer(TinyNet(), lr=0.0)


def test_clip_gradients_returns_total_norm_and_clips():
    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(4))
    unused = nn.Parameter(torch.zeros(2))  # no grad: skipped
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    total = clip_gradients([a, b, unused], max_norm=1.0)
    assert total == pytest.approx(5.0)
    clipped = math.sqrt(a.grad.pow(2).sum().item() + b.grad.pow(2).sum().item())
    assert clipped == pytest.approx(1.0, rel=1e-4)
    assert a.grad[0].item() == pytest.approx(0.6, rel=1e-4)


def test_clip_gradients_disabled_and_no_grads():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([30.0, 40.0])
    assert clip_gradients([p], None) is None
    assert clip_gradients([p], 0) is None
    assert torch.equal(p.grad, torch.tensor([30.0, 40.0]))
    assert clip_gradients(iter([nn.Parameter(torch.zeros(1))]), 1.0) == 0.0


def test_fused_sgd_matches_foreach_update():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
    fused_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
    fused_model.load_state_dict(reference.state_dict())
    optimizers = [build_optimizer(m, lr=0.1, weight_decay=1e-2, no_decay_norm_bias=True, fused=fused)
                  for m, fused in ((reference, False), (fused_model, True))]
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults["fused"]
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):  # momentum buffers take part from the second step on
        for model, optimizer in zip((reference, fused_model), optimizers):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), fused_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ resuming an optimizer state
def _trained_state(no_decay_norm_bias: bool) -> dict:
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = build_optimizer(model, lr=0.1, no_decay_norm_bias=no_decay_norm_bias)
    model.head(model.ln(torch.randn(2, 8))).sum().backward()
    optimizer.step()  # momentum buffers now exist
    return optimizer.state_dict()


def test_changed_parameter_grouping_names_both_sides_groups():
    saved = _trained_state(no_decay_norm_bias=False)
    optimizer = build_optimizer(TinyNet(), lr=0.1, no_decay_norm_bias=True)
    with pytest.raises(OptimizerStateMismatchError) as info:
        load_optimizer_state(optimizer, saved, source="checkpoint run/last.pt")
    # TinyNet trains 11 tensors: conv1 w/b, bn w/b, conv2 w, gn w/b, ln w/b, head w/b; decay keeps conv1, conv2, head w
    assert str(info.value) == (
        "checkpoint run/last.pt: the optimizer's parameter groups differ from this run's: saved decay (11 "
        "parameters); this run decay (3 parameters), no_decay (8 parameters). Settings that decide them "
        "(schedule.no_decay_norm_bias, schedule.backbone_lr_mult, model.backbone.frozen_stages, "
        "model.backbone.norm) must stay as they were to resume")
    assert isinstance(info.value, CheckpointError)
    assert all(not state for state in optimizer.state.values())  # nothing was loaded


def test_same_sizes_under_other_names_and_a_changed_trainable_set_are_named():
    saved = _trained_state(no_decay_norm_bias=True)
    saved["param_groups"][0]["name"], saved["param_groups"][1]["name"] = "no_decay", "decay"
    optimizer = build_optimizer(TinyNet(), lr=0.1, no_decay_norm_bias=True)
    with pytest.raises(OptimizerStateMismatchError, match=r"saved no_decay \(3 parameters\), decay \(8"):
        load_optimizer_state(optimizer, saved)
    model = TinyNet()
    model.head.requires_grad_(False)  # e.g. more frozen stages
    with pytest.raises(OptimizerStateMismatchError, match=r"^the checkpoint: .*saved decay \(11 parameters\); this "
                                                          r"run decay \(9 parameters\)\. "):
        load_optimizer_state(build_optimizer(model, lr=0.1), _trained_state(no_decay_norm_bias=False))


def test_matching_groups_load_the_saved_state():
    saved = _trained_state(no_decay_norm_bias=True)
    optimizer = build_optimizer(TinyNet(), lr=0.1, no_decay_norm_bias=True)
    load_optimizer_state(optimizer, saved)
    restored = optimizer.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    assert set(restored["state"]) == set(saved["state"]) and len(saved["state"]) == 4  # ln and head: momentum
    for index, state in saved["state"].items():
        assert torch.equal(restored["state"][index]["momentum_buffer"], state["momentum_buffer"])
    with pytest.raises(OptimizerStateMismatchError, match="has no list of parameter groups"):
        load_optimizer_state(optimizer, {"state": {}})
