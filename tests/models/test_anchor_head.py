"""Anchor head (RetinaNet configuration): losses on empty / half-empty batches, loss normalisation, inference output format."""

import math

import pytest
import torch

from detector.assigners import pad_targets
from detector.config import load_config
from detector.models import build_model
from detector.models.heads.common import flatten_level

TINY = ["model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.norm=bn",
        "model.backbone.frozen_stages=0", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.num_convs=1", "model.num_classes=3"]
CONFIG = "configs/retinanet/retinanet_r50_fpn_1x_coco.yaml"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_config(CONFIG, TINY))


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_image_without_boxes_gives_finite_loss_and_zero_box_loss(model):
    model.train()
    images = torch.randn(2, 3, 128, 128)
    losses = model(images, [target([], []), target([], [])])
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert losses["loss_box"].item() == 0.0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_half_empty_batch_is_finite(model):
    model.train()
    model.zero_grad()
    images = torch.randn(2, 3, 128, 128)
    losses = model(images, [target([[10, 10, 60, 70], [30, 40, 100, 120]], [0, 2]), target([], [])])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_classification_loss_normalised_by_positives(model):
    """Sum of per-anchor focal losses over non-ignored anchors / number of positives, recomputed by hand."""
    from detector.losses import focal_loss
    model.train()
    images = torch.randn(1, 3, 128, 128)
    tgt = [target([[16, 16, 80, 80]], [1])]
    head = model.head
    with torch.no_grad():
        outputs = model.dense_outputs(images)
        logits, anchors = outputs.pred_logits, outputs.anchors
        losses = head.loss(outputs, tgt)
        assigned = head.assigner.assign(anchors, tgt[0]["boxes"])
        positive = assigned >= 0
        onehot = torch.zeros_like(logits[0])
        onehot[positive, 1] = 1.0
        per_entry = focal_loss(logits[0], onehot, alpha=0.25, gamma=2.0)
        expected = per_entry[assigned != -2].sum() / positive.sum()
    assert positive.sum() > 0
    assert math.isclose(losses["loss_cls"].item(), expected.item(), rel_tol=1e-5)


def test_inference_output_format(model):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 96, 128))
    assert len(out) == 3
    for det in out:
        assert det["boxes"].shape[1] == 4 and det["boxes"].dtype == torch.float32
        assert len(det["boxes"]) == len(det["scores"]) == len(det["labels"]) <= 100
        assert (det["scores"] > 0.05).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()  # sorted per image
        assert (det["boxes"][:, 0] >= 0).all() and (det["boxes"][:, 2] <= 128).all()
        assert (det["boxes"][:, 3] <= 96).all()
        assert det["labels"].max() < 3 if len(det["labels"]) else True


def test_training_mode_requires_targets(model):
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model(torch.randn(1, 3, 64, 64))


def test_flatten_level_matches_anchor_order():
    batch, anchors, channels, height, width = 2, 3, 5, 4, 6
    out = torch.randn(batch, anchors * channels, height, width)
    flat = flatten_level(out, channels)
    assert flat.shape == (batch, height * width * anchors, channels)
    b, y, x, a, c = 1, 2, 3, 1, 4
    assert flat[b, (y * width + x) * anchors + a, c] == out[b, a * channels + c, y, x]


def test_pad_targets():
    padded = pad_targets([target([[0, 0, 1, 1]], [2]), target([], []),
                          target([[0, 0, 2, 2], [1, 1, 3, 3]], [0, 1])], torch.device("cpu"))
    assert padded.boxes.shape == (3, 2, 4)
    assert padded.valid.tolist() == [[True, False], [False, False], [True, True]]
    assert padded.labels.tolist() == [[2, 0], [0, 0], [0, 1]]
    assert padded.boxes[2, 1].tolist() == [1, 1, 3, 3]
    assert padded.ignore_boxes.shape == (3, 0, 4)
