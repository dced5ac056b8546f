"""FPN: where P6 comes from (p6_from) and whether P7 sees relu(P6) (relu_before_p7), on a hand-built FPN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.models.necks.fpn import FPN

ROOT = Path(__file__).resolve().parents[2]


def hand_fpn(p6_from: str, relu_before_p7: bool) -> FPN:
    """One channel everywhere; every conv is a single centre tap (3x3 kernels zero elsewhere):
    laterals 1x1 with weights 1, 1, 2 (C3, C4, C5); output convs x3; P6 conv x1 bias -5; P7 conv x1 bias 0."""
    fpn = FPN([1, 1, 1], out_channels=1, p6_from=p6_from, relu_before_p7=relu_before_p7)
    with torch.no_grad():
        for conv in [*fpn.lateral_convs, *fpn.output_convs, fpn.p6, fpn.p7]:
            conv.weight.zero_()
            conv.bias.zero_()
        for conv, weight in zip(fpn.lateral_convs, (1.0, 1.0, 2.0)):
            conv.weight[0, 0, 0, 0] = weight
        for conv in fpn.output_convs:
            conv.weight[0, 0, 1, 1] = 3.0
        fpn.p6.weight[0, 0, 1, 1] = 1.0
        fpn.p6.bias[0] = -5.0
        fpn.p7.weight[0, 0, 1, 1] = 1.0
    return fpn


C3 = torch.zeros(1, 1, 8, 8)
C4 = torch.ones(1, 1, 4, 4)
C5 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])


def test_hand_computed_levels():
    # L5 = 2 C5 = [[2, 4], [6, 8]]; P5 = 3 L5. L4 = C4 + up2(L5) (nearest), P4 = 3 L4; L3 = up2(L4), P3 = 3 L3.
    # P6 is a stride-2 3x3 conv (padding 1) on a 2x2 map: its one output is centred on the top-left input
    # pixel, so P6 = S[0, 0] - 5: from C5 1 - 5 = -4, from L5 2 - 5 = -3, from P5 6 - 5 = 1.
    # P7 = relu(P6) or P6 (its conv is the identity on a 1x1 map).
    lateral5 = 2 * C5
    lateral4 = C4 + lateral5.repeat_interleave(2, 2).repeat_interleave(2, 3)
    lateral3 = lateral4.repeat_interleave(2, 2).repeat_interleave(2, 3)
    expected_p6 = {"c5": -4.0, "lateral_p5": -3.0, "p5": 1.0}
    for p6_from, p6 in expected_p6.items():
        for relu in (True, False):
            levels = hand_fpn(p6_from, relu)([C3, C4, C5])
            assert [tuple(level.shape[-2:]) for level in levels] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
            assert torch.equal(levels[0], 3 * lateral3) and torch.equal(levels[1], 3 * lateral4)
            assert torch.equal(levels[2], 3 * lateral5)
            assert levels[3].item() == p6, (p6_from, relu)
            assert levels[4].item() == (max(p6, 0.0) if relu else p6), (p6_from, relu)


def test_p6_input_channels_and_bad_source():
    assert FPN([8, 16, 32], out_channels=4).p6.weight.shape == (4, 32, 3, 3)  # from C5
    assert FPN([8, 16, 32], out_channels=4, p6_from="lateral_p5").p6.weight.shape == (4, 4, 3, 3)
    assert FPN([8, 16, 32], out_channels=4, p6_from="p5").p6.weight.shape == (4, 4, 3, 3)
    with pytest.raises(ValueError, match="p6_from must be one of"):
        FPN([8, 16, 32], p6_from="c6")


def test_defaults_draw_the_same_weights_and_compute_the_same_levels():
    features = [torch.randn(1, c, s, s, generator=torch.Generator().manual_seed(c)) for c, s in
                ((8, 16), (16, 8), (32, 4))]
    torch.manual_seed(0)
    default = FPN([8, 16, 32], out_channels=4)
    torch.manual_seed(0)
    explicit = FPN([8, 16, 32], out_channels=4, p6_from="c5", relu_before_p7=True)
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)
    levels = default(features)
    assert torch.equal(levels[3], default.p6(features[2]))
    assert torch.equal(levels[4], default.p7(torch.relu(levels[3])))


EFL_DERIVED = {"configs/efl/efl_r50_fpn_2x_lvis_rfs.yaml", "configs/efl/efl_r101_fpn_2x_lvis_rfs.yaml",
               "configs/efl/fl_r50_fpn_2x_lvis_rfs.yaml", "configs/efl/fl_r101_fpn_2x_lvis_rfs.yaml",
               "configs/quickstart_lvis_efl.yaml", "configs/quickstart_lvis_fl.yaml",
               "configs/reproduce/efl/efl.yaml", "configs/reproduce/efl/fl.yaml"}


def test_each_config_uses_the_neck_of_the_recipe_it_follows():
    """EFL: P6 from C5's lateral, no ReLU before P7 (United-Perception's FPN); ATSS and GFL: P6 from P5, no ReLU
    before P7 (mmdetection's FPN, relu_before_extra_convs=False, and implus/GFocal); RetinaNet: P7 = conv(relu(P6))
    (Detectron)."""
    paths = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base_" not in p.parts)
    seen = set()
    for path in paths:
        model = load_config(path).model
        neck, name = model.neck, str(path.relative_to(ROOT))
        if name in EFL_DERIVED:
            seen.add(name)
            assert (neck.p6_from, neck.relu_before_p7) == ("lateral_p5", False), name
        elif model.type in ("atss", "gfl"):
            assert (neck.p6_from, neck.relu_before_p7) == ("p5", False), name
        else:
            assert neck.p6_from in ("c5", "p5") and neck.relu_before_p7, name
    assert seen == EFL_DERIVED
