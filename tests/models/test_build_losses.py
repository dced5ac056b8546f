"""Config names -> loss objects: each loss_cls / loss_box type builds the object it names, with its parameters, and
the objects know what the heads must know (soft targets, decoded boxes)."""

import math
import typing

import pytest
import torch

from detector.config import load_config, save_config
from detector.config_schema import BoxLossConfig, ClsLossConfig
from detector.losses import (EqualizedFocalLoss, EqualizedQualityFocalLoss, FocalLoss, FocalLossStar, GIoULoss, L1Loss,
                             QualityFocalLoss, SmoothL1Loss, focal_loss, focal_loss_star, quality_focal_loss,
                             smooth_l1_loss)
from detector.models.build import BOX_LOSSES, CLS_LOSSES, build_box_loss, build_cls_loss

RETINANET = "configs/retinanet/retinanet_r50_fpn_1x_coco.yaml"
GFL = "configs/gfl/gfl_r50_fpn_1x_coco.yaml"


def model_config(config, *overrides):
    return load_config(config, ["model.backbone.weights=null", *overrides]).model


def test_one_table_entry_per_config_name():
    """Every type the schema accepts has its constructor, and the table holds nothing else."""
    cls_types = typing.get_args(typing.get_type_hints(ClsLossConfig)["type"])
    box_types = typing.get_args(typing.get_type_hints(BoxLossConfig)["type"])
    assert set(CLS_LOSSES) == set(cls_types) == {"focal", "focal_star", "quality_focal", "equalized_focal"}
    assert set(BOX_LOSSES) == set(box_types) == {"l1", "smooth_l1", "giou", "dfl+giou"}


@pytest.mark.parametrize("config, overrides, expected, soft", [
    (RETINANET, [], FocalLoss(alpha=0.25, gamma=2.0), False),
    (RETINANET, ["model.loss_cls.type=focal_star", "model.loss_cls.gamma=3"], FocalLossStar(gamma=3.0, beta=1.0),
     False),
    (RETINANET, ["model.loss_cls.type=quality_focal"], QualityFocalLoss(beta=2.0), True),
    (GFL, [], QualityFocalLoss(beta=2.0), True),
    (GFL, ["model.loss_cls.type=focal", "model.loss_cls.alpha=0.5"], FocalLoss(alpha=0.5, gamma=2.0), False),
])
def test_functional_classification_losses(config, overrides, expected, soft):
    loss = build_cls_loss(model_config(config, *overrides))
    assert loss == expected and loss.soft_targets is soft


def test_equalized_focal_loss_takes_its_quality_form_on_the_gfl_head():
    on_anchor_head = build_cls_loss(model_config(RETINANET, "model.loss_cls.type=equalized_focal",
                                                 "model.loss_cls.scale=4", "model.num_classes=7"))
    assert type(on_anchor_head) is EqualizedFocalLoss and on_anchor_head.soft_targets is False
    assert (on_anchor_head.num_classes, on_anchor_head.scale, on_anchor_head.gamma_b) == (7, 4.0, 2.0)
    on_gfl = build_cls_loss(model_config(GFL, "model.loss_cls.type=equalized_focal", "model.num_classes=7"))
    assert type(on_gfl) is EqualizedQualityFocalLoss and on_gfl.soft_targets is True
    assert sorted(on_gfl.state_dict()) == ["efl.neg_grad", "efl.pos_grad", "efl.pos_neg"]  # checkpoint keys kept


def test_each_beta_has_its_own_key_and_the_old_key_still_works(tmp_path):
    """loss_cls.beta (older configs) is moved into the key of the chosen type; the other beta keeps its default."""
    star = model_config(RETINANET, "model.loss_cls.type=focal_star", "model.loss_cls.beta=0.5").loss_cls
    assert (star.focal_star_beta, star.quality_focal_beta, star.beta) == (0.5, 2.0, None)
    qfl = model_config(RETINANET, "model.loss_cls.type=quality_focal", "model.loss_cls.beta=1.5").loss_cls
    assert (qfl.focal_star_beta, qfl.quality_focal_beta, qfl.beta) == (1.0, 1.5, None)
    assert build_cls_loss(model_config(RETINANET, "model.loss_cls.type=quality_focal",
                                       "model.loss_cls.beta=1.5")) == QualityFocalLoss(beta=1.5)
    new_key = model_config(RETINANET, "model.loss_cls.type=focal_star", "model.loss_cls.focal_star_beta=0.25")
    assert build_cls_loss(new_key) == FocalLossStar(gamma=2.0, beta=0.25)
    focal = model_config(RETINANET, "model.loss_cls.beta=3.0").loss_cls  # no beta in focal loss: ignored, as before
    assert (focal.focal_star_beta, focal.quality_focal_beta, focal.beta) == (1.0, 2.0, None)
    cfg = load_config(RETINANET, ["model.loss_cls.type=focal_star", "model.loss_cls.beta=0.5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("loss_type, expected, on_boxes", [
    ("l1", L1Loss(), False), ("smooth_l1", SmoothL1Loss(beta=0.2), False), ("giou", GIoULoss(), True),
])
def test_box_losses(loss_type, expected, on_boxes):
    loss = build_box_loss(model_config(RETINANET, f"model.loss_box.type={loss_type}", "model.loss_box.beta=0.2"))
    assert loss == expected and loss.on_boxes is on_boxes
    assert build_box_loss(model_config(GFL)) == GIoULoss()  # dfl+giou: GIoU, with the head's own DFL term


def test_loss_objects_compute_their_equations():
    """Each object evaluates its function with its own parameters (hand-checked at one point for FL)."""
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    soft = torch.rand(5, 3) * targets
    assert torch.equal(FocalLoss(alpha=0.5, gamma=1.0)(logits, targets),
                       focal_loss(logits, targets, alpha=0.5, gamma=1.0))
    assert torch.equal(FocalLossStar(gamma=3.0, beta=0.5)(logits, targets, reduction="sum"),
                       focal_loss_star(logits, targets, gamma=3.0, beta=0.5, reduction="sum"))
    assert torch.equal(QualityFocalLoss(beta=1.5)(logits, soft), quality_focal_loss(logits, soft, beta=1.5))
    deltas, encoded = torch.randn(4, 4), torch.randn(4, 4)
    assert torch.equal(SmoothL1Loss(beta=0.3)(deltas, encoded), smooth_l1_loss(deltas, encoded, beta=0.3))
    # FL at x = 0, y = 1: p_t = 1/2, alpha_t = alpha: alpha (1/2)^gamma log 2
    value = FocalLoss(alpha=0.25, gamma=2.0)(torch.zeros(1, 1), torch.ones(1, 1))
    assert math.isclose(value.item(), 0.25 * 0.25 * math.log(2), rel_tol=1e-6)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert GIoULoss()(boxes, boxes).item() == pytest.approx(0.0, abs=1e-6)
    assert L1Loss()(deltas, deltas + 1).sum().item() == pytest.approx(16.0)
