"""AdamW and the backbone lr multiplier in detector.engine.optim: groups, one step against the written update
rule, fused = foreach, and resuming across a changed optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detector.engine.optim import OptimizerStateMismatchError, build_optimizer, load_optimizer_state


class TinyDetector(nn.Module):
    """A "backbone" (conv + BN) and a "head" (conv with bias + GroupNorm + linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.head(self.backbone(x)).mean(dim=(2, 3)))


def names_and_ids(optimizer) -> dict[str, set[int]]:
    return {group["name"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}


def test_adamw_groups_exempt_norms_and_biases_and_scale_the_backbone():
    model = TinyDetector()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, no_decay_norm_bias=True, optimizer="adamw",
                                betas=(0.8, 0.95), eps=1e-6, backbone=model.backbone, backbone_lr_mult=0.1)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["decay", "no_decay", "backbone_decay", "backbone_no_decay"]
    assert names_and_ids(optimizer) == {
        "decay": {id(model.head[0].weight), id(model.fc.weight)},
        "no_decay": {id(model.head[0].bias), id(model.head[1].weight), id(model.head[1].bias), id(model.fc.bias)},
        "backbone_decay": {id(model.backbone[0].weight)},
        "backbone_no_decay": {id(model.backbone[1].weight), id(model.backbone[1].bias)}}
    assert [g["weight_decay"] for g in groups.values()] == [0.05, 0.0, 0.05, 0.0]
    assert [g["lr"] for g in groups.values()] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in groups.values())
    # multiplier 1: the groups of before (names and sizes), nothing split off
    plain = build_optimizer(model, lr=1e-3, no_decay_norm_bias=True, optimizer="adamw", backbone=model.backbone)
    assert [g["name"] for g in plain.param_groups] == ["decay", "no_decay"]


def test_one_adamw_step_follows_the_written_rule():
    """Step 1 of AdamW (Loshchilov & Hutter): m = (1 - b1) g, v = (1 - b2) g^2, m_hat = m / (1 - b1),
    v_hat = v / (1 - b2), w <- w - lr * wd * w - lr * m_hat / (sqrt(v_hat) + eps); no decay in the no-decay
    groups, and the backbone's lr is lr * mult."""
    torch.manual_seed(0)
    model = TinyDetector().double()
    lr, wd, b1, b2, eps, mult = 0.01, 0.1, 0.9, 0.99, 1e-3, 0.5
    optimizer = build_optimizer(model, lr=lr, weight_decay=wd, no_decay_norm_bias=True, optimizer="adamw",
                                betas=(b1, b2), eps=eps, backbone=model.backbone, backbone_lr_mult=mult)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.randn(2, 3, 9, 9, dtype=torch.float64)).square().sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        decays = not (name.endswith("bias") or name.startswith(("backbone.1", "head.1")))
        group_lr = lr * mult if name.startswith("backbone") else lr
        g = grads[name]
        m_hat, v_hat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
        expected = before[name] * (1 - group_lr * wd * decays) - group_lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14, msg=name)


def test_fused_adamw_matches_foreach():
    torch.manual_seed(0)
    models = [TinyDetector(), TinyDetector()]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [build_optimizer(m, lr=1e-2, weight_decay=0.05, no_decay_norm_bias=True, optimizer="adamw",
                                  fused=fused) for m, fused in zip(models, (False, True))]
    x = torch.randn(2, 3, 9, 9)
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resuming_with_another_optimizer_or_multiplier_is_refused_by_name():
    model = TinyDetector()
    sgd = build_optimizer(model, lr=0.1)
    model(torch.randn(1, 3, 9, 9)).sum().backward()
    sgd.step()
    adamw = build_optimizer(model, lr=0.1, optimizer="adamw")
    with pytest.raises(OptimizerStateMismatchError, match="saved by sgd, this run uses adamw; schedule.optimizer"):
        load_optimizer_state(adamw, sgd.state_dict(), source="checkpoint last.pt")
    split = build_optimizer(model, lr=0.1, backbone=model.backbone, backbone_lr_mult=0.1)
    with pytest.raises(OptimizerStateMismatchError, match=r"saved decay \(9 parameters\); this run decay \(6 "
                                                          r"parameters\), backbone_decay \(3 parameters\).*"
                                                          r"schedule.backbone_lr_mult"):
        load_optimizer_state(split, sgd.state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(TinyDetector(), lr=0.1, optimizer="adam")
    with pytest.raises(ValueError, match="needs the backbone module"):
        build_optimizer(TinyDetector(), lr=0.1, backbone_lr_mult=0.1)
    with pytest.raises(ValueError, match="backbone_lr_mult must be > 0"):
        build_optimizer(TinyDetector(), lr=0.1, backbone=nn.Linear(1, 1), backbone_lr_mult=0.0)
