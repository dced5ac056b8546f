"""The templates for training on one's own data (configs/custom/): what they inherit, and that the fine-tuning one
loads every weight tools/convert_torchvision.py writes."""

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from detector.config import load_config
from detector.conversion.torchvision_retinanet import convert_torchvision, torchvision_model_config
from detector.models import build_model
from detector.runtime.checkpoint import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCRATCH = CONFIGS / "custom" / "retinanet_r18_scratch_cpu.yaml"
FINETUNE = CONFIGS / "custom" / "retinanet_r50_fpn_torchvision_finetune.yaml"


def own_data(tmp_path: Path, num_classes: int) -> list[str]:
    categories = [{"id": i + 1, "name": f"kind{i}"} for i in range(num_classes)]
    ann_file = tmp_path / "own" / "train.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return [f"data.train.ann_file={ann_file}", f"data.train.img_dir={tmp_path}", f"data.val.ann_file={ann_file}",
            f"data.val.img_dir={tmp_path}"]


def test_the_scratch_template_is_the_quick_start_with_auto_classes(tmp_path):
    template, quickstart = load_config(SCRATCH), load_config(CONFIGS / "quickstart.yaml")
    assert template == quickstart  # as shipped: the quick start's data, 6 classes read from the generator's config
    own = load_config(SCRATCH, own_data(tmp_path, 3))
    assert own.model == dataclasses.replace(quickstart.model, num_classes=3)
    assert (own.schedule, own.runtime) == (quickstart.schedule, quickstart.runtime)
    assert not own.data.synthetic.enabled


def test_the_finetune_template_is_torchvisions_v1_network(tmp_path):
    cfg = load_config(FINETUNE, own_data(tmp_path, 3))
    assert cfg.model == torchvision_model_config("v1", num_classes=3, init_checkpoint="work_dirs/tv_v1/model.pt")
    assert (cfg.schedule.lr, cfg.data.batch_size, cfg.schedule.epochs, cfg.schedule.steps) == (0.0025, 4, 12, [8, 11])
    assert cfg.schedule.lr / cfg.data.batch_size == 0.01 / 16  # the 1x recipe's lr per image


def test_the_finetune_template_loads_every_converted_weight_but_the_classifier(tmp_path, caplog):
    torch.manual_seed(0)
    torchvision_model = retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save(torchvision_model.state_dict(), tmp_path / "tv.pth")
    checkpoint, _, version = convert_torchvision(str(tmp_path / "tv.pth"), tmp_path / "tv_v1" / "model.pt")
    assert version == "v1"
    cfg = load_config(FINETUNE, [*own_data(tmp_path, 3), f"model.init_checkpoint={checkpoint}"])
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg)
    converted = load_checkpoint(checkpoint, map_location="cpu")["model"]
    state = model.state_dict()
    assert set(state) == set(converted)
    different = [key for key in state if state[key].shape != converted[key].shape]
    assert different == ["head.cls_logits.weight", "head.cls_logits.bias"]  # 9 anchors x 3 classes, not x 80
    assert state["head.cls_logits.weight"].shape[0] == 9 * 3
    assert all(torch.equal(state[key], converted[key]) for key in state if key not in different)
    assert "2 entries of another shape keep their initialisation" in caplog.text
