"""The EFL configs hold the official improved baseline's settings, and its derived configs inherit them.

Official values: United-Perception configs/det/efl/efl_improved_baseline_r{50,101}_2x_rfs.yaml (the same in the
EOD-era code), with the defaults of the classes it names: up/data/samplers/sampler.py (repeat_factor, ri_mode ceil),
up/utils/model/lr_helper.py (warmup_epochs, linear, warmup_ratio), up/tasks/det/models/necks/fpn.py (FPN,
downsample conv: P6 from the last lateral, no ReLU before P7), .../heads/roi_head/retina_head.py
(RetinaHeadWithIOU: no scale per level), .../utils/bbox_helper.py (bbox2offset weights (1, 1, 1, 1)),
.../postprocess/roi_predictor.py (base_multicls + retina_multicls merger), .../postprocess/retina_post_process.py
(IOUPostProcess: score cls x IoU, GIoU weighted by the IoU targets).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from detector.boxes import DeltaBoxCoder
from detector.config import load_config
from detector.models import build_model

ROOT = Path(__file__).resolve().parents[1]
EFL_CONFIGS = ["efl_r50_fpn_2x_lvis_rfs.yaml", "efl_r101_fpn_2x_lvis_rfs.yaml", "fl_r50_fpn_2x_lvis_rfs.yaml",
               "fl_r101_fpn_2x_lvis_rfs.yaml"]
TINY = ["model.backbone.depth=18", "model.backbone.weights=null", "model.neck.out_channels=64",
        "model.head.feat_channels=64", "model.head.num_convs=1"]


def assert_official_model(m):
    assert (m.neck.p6_from, m.neck.relu_before_p7) == ("lateral_p5", False)  # FPN(downsample: conv)
    assert m.box_coder.weights == [1.0, 1.0, 1.0, 1.0]  # bbox2offset / offset2bbox defaults
    assert m.head.scale_per_level is False and m.head.quality_branch == "iou"  # RetinaHeadWithIOU
    assert (m.head.norm, m.head.prior_prob, m.assigner.type, m.assigner.topk) == ("gn", 0.001, "atss", 18)
    assert (m.anchors.scales, m.anchors.ratios) == ([0.75, 1.0], [1.0])  # anchor_scales [6, 8] of 8 x stride
    # pre_nms_score_thresh 0, pre_nms_top_n 6000 (at most the level's anchors), NMS 0.5, top_n 300, score cls x IoU
    assert (m.test.score_thr, m.test.topk_per_level, m.test.nms_iou, m.test.max_dets) == (0.0, 6000, 0.5, 300)
    assert (m.test.topk_capped_at_anchors, m.test.quality_fusion) == (True, "product")
    assert m.loss_box.weighting == "iou_target"  # IOUPostProcess: GIoU weighted by the IoU targets


@pytest.mark.parametrize("name", EFL_CONFIGS)
def test_efl_configs_follow_the_official_recipe(name):
    cfg = load_config(ROOT / "configs" / "efl" / name)
    assert_official_model(cfg.model)
    d, s = cfg.data, cfg.schedule
    assert (d.train.repeat_threshold, d.train.repeat_rounding) == (0.001, "ceil")  # t 0.001, ri_mode ceil
    assert (d.size_divisor, d.min_size, d.max_size, d.batch_size) == (64, [640, 672, 704, 736, 768, 800], 1333, 16)
    assert (s.epochs, s.steps, s.lr, s.momentum, s.weight_decay, s.clip_grad_norm) == (24, [16, 22], 0.02, 0.9,
                                                                                        1e-4, 35.0)
    assert (s.warmup_epochs, s.warmup_iters, s.warmup_factor) == (1, 0, 0.001)
    assert cfg.model.loss_cls.type == ("equalized_focal" if name.startswith("efl") else "focal")


@pytest.mark.parametrize("name", ["quickstart_lvis_efl.yaml", "quickstart_lvis_fl.yaml",
                                  "reproduce/efl/efl.yaml", "reproduce/efl/fl.yaml"])
def test_derived_configs_keep_the_official_model_and_rounding(name):
    cfg = load_config(ROOT / "configs" / name)
    if name.startswith("quickstart"):  # 192 px images: fewer candidates per level, as the official cap gives
        assert cfg.model.test.topk_per_level == 1000
        cfg = load_config(ROOT / "configs" / name, ["model.test.topk_per_level=6000"])
    assert_official_model(cfg.model)
    assert cfg.data.train.repeat_rounding == "ceil"


def test_efl_head_has_no_scale_per_level_unlike_atss():
    efl = build_model(load_config(ROOT / "configs" / "efl" / "efl_r50_fpn_2x_lvis_rfs.yaml", TINY)).state_dict()
    atss = build_model(load_config(ROOT / "configs" / "atss" / "atss_r50_fpn_1x_coco.yaml", TINY)).state_dict()
    assert not any("scales" in key for key in efl)
    assert sum("scales" in key for key in atss) == 5  # one per level P3-P7
    assert efl["neck.p6.weight"].shape[1] == 64  # P6 reads the 64-channel lateral, not C5's 512 channels


def test_coder_with_unit_weights_encodes_plain_deltas():
    # Anchor (0, 0, 10, 20) -> box (5, 0, 25, 40): dx = (15 - 5) / 10 = 1, dy = (20 - 10) / 20 = 0.5,
    # dw = log(20 / 10), dh = log(40 / 20); ATSS's weights (10, 10, 5, 5) would give 10, 5, 5 log 2, 5 log 2.
    weights = load_config(ROOT / "configs" / "efl" / "efl_r50_fpn_2x_lvis_rfs.yaml").model.box_coder.weights
    anchors, boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]]), torch.tensor([[5.0, 0.0, 25.0, 40.0]])
    coder = DeltaBoxCoder(weights=tuple(weights))
    log2 = math.log(2.0)
    assert torch.allclose(coder.encode(boxes, anchors), torch.tensor([[1.0, 0.5, log2, log2]]))
    assert torch.allclose(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-5)
