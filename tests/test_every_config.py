"""Every shipped config builds a model that runs forward and backward (backbone made tiny by override)."""

from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.models import build_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Table rows that change only a loss scalar (alpha, gamma) or ATSS's k build the same network as their parent
# config: tests/scripts/test_reproduce.py loads each of them; here only rows that change the network run.
SCALAR_ONLY_ROWS = {"retinanet_1a", "retinanet_1b", "atss_4"}
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml")
                 if "_base_" not in p.parts and not SCALAR_ONLY_ROWS & set(p.parts))
# No weights are read: neither backbone weights nor a whole-detector init_checkpoint (configs/custom's fine-tuning
# template names one that tools/convert_torchvision.py writes; its loading is tested in tests/test_custom_configs.py).
TINY = ["model.backbone.depth=18", "model.backbone.weights=null", "model.init_checkpoint=null",
        "model.neck.out_channels=64", "model.head.feat_channels=64",
        "model.head.num_convs=1"]  # 64: GroupNorm(32) needs 2+ channels per group


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_forward_backward(path):
    cfg = load_config(path, TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    num_classes = cfg.model.num_classes
    targets = [{"boxes": torch.tensor([[8.0, 12.0, 70.0, 60.0], [40.0, 30.0, 120.0, 110.0]]),
                "labels": torch.tensor([0, num_classes - 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(torch.randn(2, 3, 128, 128), targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        detections = model(torch.randn(1, 3, 128, 128))
    assert len(detections) == 1 and detections[0]["boxes"].shape[-1] == 4


def test_configs_found():
    names = {str(p.relative_to(CONFIG_DIR)) for p in CONFIGS}
    assert {"quickstart.yaml", "retinanet/retinanet_r50_fpn_1x_coco.yaml", "custom/retinanet_r18_scratch_cpu.yaml",
            "custom/retinanet_r50_fpn_torchvision_finetune.yaml",
            "reproduce/retinanet_1c/scales_1_ratios_1.yaml", "reproduce/gfl/qfl_dfl_reg_max_20.yaml"} <= names
    assert not any(name.startswith("reproduce/atss_4/") for name in names)
