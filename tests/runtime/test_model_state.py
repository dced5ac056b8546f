"""Tests for detector.runtime.model_state: loading state dicts with every mismatch named, DDP prefixes."""

import pytest
import torch
from torch import nn

from detector.runtime.model_state import StateDictMismatchError, load_model_state


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
