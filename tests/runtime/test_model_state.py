"""Tests for detector.runtime.model_state: loading state dicts with every mismatch named, DDP prefixes, weights
of another kind of detector named in one line."""

from pathlib import Path

import pytest
import torch
from torch import nn

from detector.config import load_config
from detector.models import build_model
from detector.runtime.checkpoint import save_checkpoint
from detector.runtime.model_state import StateDictMismatchError, load_model_checkpoint, load_model_state


class Small(nn.Module):
    def __init__(self, num_classes: int = 3, extra: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.cls = nn.Linear(4, num_classes)
        if extra:
            self.extra = nn.Linear(2, 2)


def test_load_model_state_strict_lists_every_mismatch_by_name():
    source = Small(num_classes=3, extra=True).state_dict()
    del source["bn.running_var"]
    with pytest.raises(StateDictMismatchError) as info:
        load_model_state(Small(num_classes=5), source)
    message = str(info.value)
    assert "missing keys (1): bn.running_var" in message
    assert "extra.weight" in message and "extra.bias" in message
    assert "cls.weight: [3, 4] -> [5, 4]" in message and "cls.bias: [3] -> [5]" in message
    assert info.value.missing_keys == ["bn.running_var"]
    assert sorted(info.value.unexpected_keys) == ["extra.bias", "extra.weight"]
    assert [key for key, _, _ in info.value.shape_mismatches] == ["cls.weight", "cls.bias"]


def test_load_model_state_non_strict_loads_matching_entries():
    source_model = Small(num_classes=3)
    target = Small(num_classes=5)
    result = load_model_state(target, source_model.state_dict(), strict=False)
    assert torch.equal(target.conv.weight, source_model.conv.weight)
    assert not result.missing_keys and not result.unexpected_keys
    assert [key for key, _, _ in result.shape_mismatches] == ["cls.weight", "cls.bias"]


def test_load_model_state_handles_ddp_prefix_both_ways():
    source = Small()
    prefixed = {f"module.{key}": value for key, value in source.state_dict().items()}
    bare = Small()
    assert load_model_state(bare, prefixed) == ([], [], [])
    assert torch.equal(bare.cls.weight, source.cls.weight)
    wrapped = nn.DataParallel(Small())  # same `.module` wrapping as DDP
    load_model_state(wrapped, source.state_dict())
    assert torch.equal(wrapped.module.conv.weight, source.conv.weight)
    load_model_state(wrapped, prefixed)


# ------------------------------------------------------------------ weights of another kind of detector
ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.backbone.depth=18", "model.neck.out_channels=32", "model.head.num_convs=1",
        "model.head.feat_channels=32", "model.num_classes=3", "data.synthetic.num_classes=3"]


def tiny_detector(config: str):
    return build_model(load_config(ROOT / "configs" / config, TINY))


@pytest.fixture(scope="module")
def detectors():
    return {name: tiny_detector(f"{name}.yaml") for name in ("quickstart", "quickstart_atss", "quickstart_gfl")}


def test_gfl_weights_into_a_retinanet_name_both_model_types_in_one_line(detectors, tmp_path):
    path = tmp_path / "gfl.pt"
    save_checkpoint(path, {"model": detectors["quickstart_gfl"].state_dict()})
    retinanet = detectors["quickstart"]
    before = {key: value.clone() for key, value in retinanet.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as info:
        load_model_checkpoint(retinanet, path, model_type="retinanet")
    assert str(info.value) == (f"checkpoint {path} holds a gfl model, the config builds retinanet (its head has "
                               "head.box_bins.*, this one head.box_deltas.*); use a checkpoint trained with the same "
                               "model.type")
    assert "head.box_deltas.weight" in info.value.missing_keys  # the lists stay on the exception
    assert info.value.saved_kind == "gfl"
    assert all(torch.equal(value, before[key]) for key, value in retinanet.state_dict().items())  # nothing loaded
    # without the config's type, the model's own kind is named
    with pytest.raises(StateDictMismatchError, match=r"^the state dict holds a gfl model, this model is a "
                                                     r"retinanet / atss model \(its head"):
        load_model_state(retinanet, detectors["quickstart_gfl"].state_dict())


def test_anchor_head_weights_into_a_gfl_model_and_same_kind_mismatches(detectors):
    with pytest.raises(StateDictMismatchError, match=r"^the state dict holds a retinanet / atss model, the config "
                                                     r"builds gfl \(its head has head.box_deltas"):
        load_model_state(detectors["quickstart_gfl"], detectors["quickstart_atss"].state_dict(), model_type="gfl")
    # ATSS into RetinaNet: the same head class with other options, so every differing key is listed as before
    with pytest.raises(StateDictMismatchError) as info:
        load_model_state(detectors["quickstart"], detectors["quickstart_atss"].state_dict(), source="checkpoint a.pt")
    message = str(info.value)
    assert info.value.saved_kind is None
    assert message.startswith("checkpoint a.pt: state dict does not match DenseDetector:\n")
    assert "unexpected keys" in message and "head.quality_logits.weight" in message


def test_non_strict_load_of_another_kind_warns_with_the_kind_and_the_keys(detectors, caplog):
    retinanet = tiny_detector("quickstart.yaml")
    gfl_state = detectors["quickstart_gfl"].state_dict()
    with caplog.at_level("WARNING"):
        result = load_model_state(retinanet, gfl_state, strict=False, model_type="retinanet")
    assert "holds a gfl model, the config builds retinanet" in caplog.text and "missing keys" in caplog.text
    key = "backbone.layer1.0.conv1.weight"
    assert torch.equal(retinanet.state_dict()[key], gfl_state[key])
    assert "head.box_bins.weight" in result.unexpected_keys
