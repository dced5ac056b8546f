"""model.init_checkpoint: the whole detector starts from a checkpoint's weights (fine-tuning)."""

from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.models import build_model
from detector.runtime.checkpoint import CheckpointError, save_checkpoint

CONFIG = Path(__file__).resolve().parents[2] / "configs/quickstart.yaml"
TINY = ["model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32"]


def test_init_checkpoint_loads_every_entry_and_keeps_a_classifier_of_another_shape(tmp_path):
    torch.manual_seed(0)
    source = build_model(load_config(CONFIG, TINY))
    save_checkpoint(tmp_path / "source.pt", {"model": source.state_dict()})
    same = build_model(load_config(CONFIG, TINY + [f"model.init_checkpoint={tmp_path / 'source.pt'}"]))
    for key, value in source.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key

    torch.manual_seed(1)
    other = build_model(load_config(CONFIG, TINY + ["model.num_classes=3", "data.synthetic.num_classes=3",
                                                    f"model.init_checkpoint={tmp_path / 'source.pt'}"]))
    state = other.state_dict()
    assert state["head.cls_logits.weight"].shape[0] == 9 * 3  # its own, freshly initialised classifier
    for key, value in source.state_dict().items():
        if not key.startswith("head.cls_logits."):
            assert torch.equal(state[key], value), key


def test_init_checkpoint_of_another_architecture_is_an_error(tmp_path):
    source = build_model(load_config(CONFIG, TINY + ["model.backbone.depth=34"]))
    save_checkpoint(tmp_path / "r34.pt", {"model": source.state_dict()})
    with pytest.raises(CheckpointError, match="does not fit this model: missing keys .*unexpected keys .*layer1.2"):
        build_model(load_config(CONFIG, TINY + [f"model.init_checkpoint={tmp_path / 'r34.pt'}"]))
