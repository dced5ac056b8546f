"""GFL and ATSS heads: empty / half-empty batches, integral decoding, soft targets, quality branches."""

import math

import pytest
import torch

from detector.config import ConfigError, load_config
from detector.losses import integral_distribution
from detector.models import build_model
from detector.models.heads.common import centerness_target

TINY = ["model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.norm=bn",
        "model.backbone.frozen_stages=0", "model.neck.out_channels=64", "model.head.feat_channels=64",
        "model.head.num_convs=1", "model.num_classes=3"]


def build(config, *extra):
    torch.manual_seed(0)
    return build_model(load_config(config, TINY + list(extra)))


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


@pytest.mark.parametrize("config", ["configs/gfl/gfl_r50_fpn_1x_coco.yaml", "configs/atss/atss_r50_fpn_1x_coco.yaml"])
def test_empty_and_half_empty_batches(config):
    model = build(config).train()
    empty = model(torch.randn(2, 3, 128, 128), [target([], []), target([], [])])
    assert all(torch.isfinite(v) for v in empty.values())
    assert empty["loss_cls"] > 0
    for key, value in empty.items():
        if key != "loss_cls":
            assert value.item() == 0.0, key
    half = model(torch.randn(2, 3, 128, 128), [target([[10, 12, 70, 90]], [1]), target([], [])])
    assert all(torch.isfinite(v) for v in half.values())
    assert half["loss_box"] > 0
    sum(half.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gfl_loss_keys_and_without_dfl():
    with_dfl = build("configs/gfl/gfl_r50_fpn_1x_coco.yaml").train()
    losses = with_dfl(torch.randn(1, 3, 128, 128), [target([[10, 12, 70, 90]], [2])])
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl"}
    no_dfl = build("configs/gfl/gfl_r50_fpn_1x_coco.yaml", "model.loss_box.type=giou").train()
    assert set(no_dfl(torch.randn(1, 3, 128, 128), [target([[10, 12, 70, 90]], [2])])) == {"loss_cls", "loss_box"}


def test_integral_decoding_round_trip():
    """A two-bin split at (floor(y), floor(y) + 1) with weights (1 - frac, frac) decodes back to y."""
    reg_max = 16
    targets = torch.tensor([0.0, 3.25, 7.5, 15.9])
    low = targets.floor().long()
    probs = torch.full((4, reg_max + 1), 1e-12)
    probs[torch.arange(4), low] = 1 - (targets - low)
    probs[torch.arange(4), (low + 1).clamp(max=reg_max)] += targets - low
    decoded = integral_distribution(probs.log())
    assert torch.allclose(decoded, targets, atol=1e-5)


def test_gfl_classification_targets_are_detached_ious():
    """QFL's target at a positive is the IoU of the decoded (detached) box; the class score gets no box gradient."""
    model = build("configs/gfl/gfl_r50_fpn_1x_coco.yaml").train()
    head = model.head
    outputs = model.dense_outputs(torch.randn(1, 3, 128, 128))
    captured = {}
    original = head.cls_loss

    def spy(pred, tgt, reduction):
        captured["targets"] = tgt
        return original(pred, tgt, reduction=reduction)

    spy.soft_targets = original.soft_targets
    head.cls_loss = spy
    head.loss(outputs, [target([[10, 12, 70, 90]], [2])])
    soft = captured["targets"]
    assert soft.requires_grad is False
    positives = soft.sum(dim=2) > 0
    assert positives.any()
    assert (soft[..., [0, 1]] == 0).all()  # only the positive's class carries a score
    assert ((soft[..., 2][positives] > 0) & (soft[..., 2][positives] <= 1)).all()


def test_centerness_target_hand_values():
    points = torch.tensor([[50.0, 50.0], [20.0, 50.0]])
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 100.0]])
    expected = torch.tensor([1.0, math.sqrt(20 / 80 * 1.0)])
    assert torch.allclose(centerness_target(points, boxes), expected)


def test_quality_branch_scores_are_geometric_mean():
    model = build("configs/atss/atss_r50_fpn_1x_coco.yaml", "model.test.score_thr=0.0",
                  "model.test.nms_iou=1.0").eval()
    with torch.no_grad():
        images = torch.randn(1, 3, 64, 64)
        feats = model.neck(model.backbone(images))
        logits, deltas, quality = model.head(feats)
        det = model(images)[0]
    expected = (logits.sigmoid() * quality.sigmoid()[..., None]).sqrt().flatten()
    top = expected.sort(descending=True).values[: len(det["scores"])]
    assert torch.allclose(det["scores"].sort(descending=True).values, top, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["model.type=retinanet", "model.loss_box.type=dfl+giou"], "dfl\\+giou"),
    (["model.type=gfl", "model.loss_box.type=l1", "model.anchors.scales=[1.0]", "model.anchors.ratios=[1.0]"],
     "l1"),
    (["model.type=gfl", "model.loss_box.type=giou"], "one anchor"),
    (["model.type=gfl", "model.loss_box.type=giou", "model.anchors.scales=[1.0]", "model.anchors.ratios=[1.0]",
      "model.head.quality_branch=iou"], "quality_branch"),
])
def test_impossible_combinations_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/retinanet/retinanet_r50_fpn_1x_coco.yaml", overrides)


@pytest.mark.parametrize("loss", ["focal", "focal_star", "quality_focal", "equalized_focal"])
@pytest.mark.parametrize("config", ["configs/retinanet/retinanet_r50_fpn_1x_coco.yaml",
                                    "configs/gfl/gfl_r50_fpn_1x_coco.yaml"])
def test_every_classification_loss_in_every_head(config, loss):
    model = build(config, f"model.loss_cls.type={loss}").train()
    losses = model(torch.randn(1, 3, 96, 96), [target([[10, 12, 70, 90]], [1])])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    if loss == "equalized_focal":
        stats = [b for name, b in model.named_buffers() if name.endswith("pos_grad")]
        assert stats and stats[0].sum() > 0  # the gradient hook ran during backward
        assert any(name.endswith("pos_grad") for name in model.state_dict())
