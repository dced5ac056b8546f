"""DenseDetector.dense_outputs is what the forward pass runs: the same losses in training and the same detections in
eval mode when the head is called on it directly, and the input size reaches the anchors (strides_from_input)."""

import pytest
import torch

from detector.config import load_config
from detector.models import build_model
from detector.models.outputs import DenseOutputs

TINY = ["model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.norm=bn",
        "model.backbone.frozen_stages=0", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.num_convs=1", "model.num_classes=3", "model.test.score_thr=0.0"]
CONFIGS = ["configs/retinanet/retinanet_r50_fpn_1x_coco.yaml", "configs/atss/atss_r50_fpn_1x_coco.yaml",
           "configs/gfl/gfl_r50_fpn_1x_coco.yaml"]


def build(config, *extra):
    torch.manual_seed(0)
    return build_model(load_config(config, TINY + list(extra)))


def targets():
    return [{"boxes": torch.tensor([[8.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
            {"boxes": torch.tensor([[30.0, 20.0, 90.0, 50.0], [0.0, 0.0, 20.0, 30.0]]), "labels": torch.tensor([0, 2])}]


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_is_the_head_on_dense_outputs(config):
    model = build(config)
    images = torch.randn(2, 3, 96, 128)
    model.train()
    torch.manual_seed(1)
    losses = model(images, targets())
    torch.manual_seed(1)
    outputs = model.dense_outputs(images)
    assert isinstance(outputs, DenseOutputs) and outputs.image_size == (96, 128)
    num_anchors = outputs.anchors.shape[0]
    assert sum(outputs.num_anchors_per_level) == num_anchors
    assert outputs.pred_logits.shape == (2, num_anchors, 3)
    direct = model.head.loss(outputs, targets())
    assert list(direct) == list(losses) and all(torch.equal(direct[k], losses[k]) for k in losses)

    model.eval()
    with torch.no_grad():
        detections = model(images)
        by_hand = model.head.predict(model.dense_outputs(images))
    assert len(detections) == 2 and any(len(d["boxes"]) for d in detections)
    for det, manual in zip(detections, by_hand):
        assert all(torch.equal(det[key], manual[key]) for key in ("boxes", "scores", "labels"))


def test_dense_outputs_fields_follow_the_head():
    anchor_head = build(CONFIGS[1]).eval()  # ATSS: centerness branch
    with torch.no_grad():
        outputs = anchor_head.dense_outputs(torch.randn(2, 3, 128, 128))  # GroupNorm: 2 values at 1 x 1 P7
    num_anchors = outputs.anchors.shape[0]
    assert outputs.pred_regression.shape == (2, num_anchors, 4) and outputs.pred_quality.shape == (2, num_anchors)
    gfl = build(CONFIGS[2], "model.head.reg_max=8").eval()
    with torch.no_grad():
        outputs = gfl.dense_outputs(torch.randn(2, 3, 128, 128))
    assert outputs.pred_regression.shape == (2, outputs.anchors.shape[0], 4, 9) and outputs.pred_quality is None
    scores = gfl.head.pred_scores(outputs)
    every = torch.arange(outputs.anchors.shape[0])
    boxes = gfl.head.decode_boxes(outputs, torch.ones_like(every), every)  # image 1, all anchors
    assert scores.shape == outputs.pred_logits.shape and boxes.shape == (len(every), 4)


def test_strides_from_input_gets_the_input_size():
    """With torchvision's grid rule, P6 / P7 steps come from the input size: 96 rows give P6 2 rows (96 // 2 = 48
    px per step, not 64) and P7 1 row (96 px); the loss and the detections use those anchors."""
    model = build(CONFIGS[0], "model.anchors.strides_from_input=true")
    images = torch.randn(2, 3, 96, 160)
    model.train()
    outputs = model.dense_outputs(images)
    steps = model.anchor_generator.level_steps([(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)], (96, 160))
    assert steps[3] == (48, 53) and steps[4] == (96, 80)
    level_start = sum(outputs.num_anchors_per_level[:3])
    p6 = outputs.anchors[level_start:level_start + outputs.num_anchors_per_level[3]]
    centres_y = ((p6[:, 1] + p6[:, 3]) / 2).unique()
    assert torch.equal(centres_y, torch.tensor([0.0, 48.0]))
    losses = model(images, targets())
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        assert len(model(images)) == 2
