"""Anchor-based dense head: RetinaNet, ATSS and the EFL improved baseline.

RetinaNet (Lin et al. 2017): two towers shared across the FPN levels, not with each other; a classification
output of A * K sigmoid logits per location (bias -log((1 - pi) / pi), pi = prior_prob) and a box output of
A * 4 deltas. ATSS (Zhang et al. 2020) adds GroupNorm towers, a learnable scale per level on the deltas and a
centerness branch; the EFL improved baseline (Li et al. 2022) uses an IoU branch instead.

Training assigns anchors with the configured assigner (MaxIoU or ATSS), then, with N_pos the number of
positive anchors in the batch averaged over processes (at least 1), the classification loss of
:class:`~detector.models.heads.base.DenseHead` and:

    loss_cls     = w_cls * sum_{non-ignored anchors, classes} cls_loss(x, y) / N_pos
                   (y one-hot; for a soft-target loss such as QFL, y = IoU of the decoded box with its gt)
    loss_box     = w_box * sum_{positives} box_loss / N_pos
                   (centerness branch: each positive weighted by its centerness target, divided by their sum)
    loss_quality = w_q * sum_{positives} BCE(quality logit, centerness or IoU target) / N_pos

Assignment and losses run over the whole batch at once (ground truths padded per batch). At inference the
score is sigmoid(cls), or sqrt(sigmoid(cls) * sigmoid(quality)) with a quality branch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.assigners.base import Assigner
from detector.boxes import DeltaBoxCoder, box_iou_paired
from detector.losses import BoxLoss, ClassificationLoss
from detector.models.heads.base import DenseHead, LossWeights, Positives
from detector.models.heads.common import (Scale, TowerSpec, anchor_centres, centerness_target, flatten_level,
                                          prediction_conv)
from detector.models.outputs import DenseOutputs
from detector.models.postprocess import InferenceParams

QUALITY_BRANCHES = (None, "centerness", "iou")


class AnchorHead(DenseHead):
    """Towers, outputs, loss and inference decoding of RetinaNet-style anchor heads."""

    def __init__(self, *, num_classes: int, num_anchors: int, num_levels: int, tower: TowerSpec, assigner: Assigner,
                 box_coder: DeltaBoxCoder, cls_loss: ClassificationLoss, box_loss: BoxLoss, prior_prob: float = 0.01,
                 quality_branch: str | None = None, scale_per_level: bool = False,
                 loss_weights: LossWeights = LossWeights(), inference: InferenceParams = InferenceParams()):
        if quality_branch not in QUALITY_BRANCHES:
            raise ValueError(f"quality_branch must be one of {QUALITY_BRANCHES}, got {quality_branch!r}")
        super().__init__(num_classes=num_classes, assigner=assigner, cls_loss=cls_loss, loss_weights=loss_weights,
                         inference=inference)
        self.num_anchors = num_anchors
        self.cls_tower = tower.build()
        self.box_tower = tower.build()
        self.cls_logits = prediction_conv(tower.out_channels, num_anchors * num_classes,
                                          bias_value=-math.log((1 - prior_prob) / prior_prob))
        self.box_deltas = prediction_conv(tower.out_channels, num_anchors * 4)
        self.quality_branch = quality_branch
        self.quality_logits = prediction_conv(tower.out_channels, num_anchors) if quality_branch else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels)) if scale_per_level else None
        self.box_coder = box_coder
        self.box_loss = box_loss  # (pred (P, 4), target (P, 4), reduction) -> loss; .on_boxes: decoded boxes

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Class logits (B, N, K), box deltas (B, N, 4) and quality logits (B, N) or None; N = all anchors."""
        cls_out, box_out, quality_out = [], [], []
        for level, feature in enumerate(features):
            cls_out.append(flatten_level(self.cls_logits(self.cls_tower(feature)), self.num_classes))
            box_feature = self.box_tower(feature)
            deltas = self.box_deltas(box_feature)
            if self.scales is not None:
                deltas = self.scales[level](deltas)
            box_out.append(flatten_level(deltas, 4))
            if self.quality_logits is not None:
                quality_out.append(flatten_level(self.quality_logits(box_feature), 1))
        quality = torch.cat(quality_out, dim=1).squeeze(2) if quality_out else None
        return torch.cat(cls_out, dim=1), torch.cat(box_out, dim=1), quality

    @property
    def normaliser_minimums(self) -> dict[str, float]:
        """N_pos at least 1; with a centerness branch, the sum of centerness targets at least 1e-6."""
        return {"num_pos": 1.0, "centerness": 1e-6} if self.quality_branch == "centerness" else {"num_pos": 1.0}

    def _centerness_targets(self, outputs: DenseOutputs, pos: Positives) -> Tensor:
        """(P,) centerness of each positive's anchor centre inside its ground truth (ATSS's box-loss weights)."""
        return centerness_target(anchor_centres(outputs.anchors[pos.anchor_idx]), pos.gt_boxes)

    def normaliser_sums(self, outputs: DenseOutputs, pos: Positives) -> dict[str, Tensor]:
        sums = {"num_pos": pos.local_num_pos}
        if self.quality_branch == "centerness":
            sums["centerness"] = self._centerness_targets(outputs, pos).sum()
        return sums

    def loss(self, outputs: DenseOutputs, targets: list[dict],
             normalisers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        pos = self.match(outputs, targets)
        norm = normalisers if normalisers is not None else self.reduce_normalisers(self.normaliser_sums(outputs, pos))
        num_pos = norm["num_pos"]
        pos_anchors = outputs.anchors[pos.anchor_idx]  # (P, 4)
        pos_deltas = outputs.pred_regression[pos.batch_idx, pos.anchor_idx].float()  # (P, 4)
        pos_boxes = self.box_coder.decode(pos_deltas, pos_anchors)  # (P, 4)
        pos_iou = box_iou_paired(pos_boxes.detach(), pos.gt_boxes) if (
            self.cls_loss.soft_targets or self.quality_branch == "iou") else None  # (P,)
        losses = {"loss_cls": self.classification_loss(outputs.pred_logits, pos, pos_iou, num_pos)}

        weights = self.loss_weights
        if self.box_loss.on_boxes:
            box_terms = self.box_loss(pos_boxes, pos.gt_boxes, reduction="none")  # (P,)
        else:
            box_terms = self.box_loss(pos_deltas, self.box_coder.encode(pos.gt_boxes, pos_anchors),
                                      reduction="none").sum(dim=1)  # (P,)
        if self.quality_branch is None:
            losses["loss_box"] = weights.box * box_terms.sum() / num_pos
            return losses
        if self.quality_branch == "centerness":
            quality_target = self._centerness_targets(outputs, pos)  # (P,)
            losses["loss_box"] = weights.box * (box_terms * quality_target).sum() / norm["centerness"]
        else:
            quality_target = pos_iou
            losses["loss_box"] = weights.box * box_terms.sum() / num_pos
        pos_quality = outputs.pred_quality[pos.batch_idx, pos.anchor_idx].float()  # (P,)
        losses["loss_quality"] = weights.quality * F.binary_cross_entropy_with_logits(
            pos_quality, quality_target, reduction="sum") / num_pos
        return losses

    def pred_scores(self, outputs: DenseOutputs) -> Tensor:
        """sigmoid(cls) (B, N, K), or sqrt(sigmoid(cls) * sigmoid(quality)) with a quality branch."""
        scores = outputs.pred_logits.float().sigmoid()  # (B, N, K)
        if outputs.pred_quality is not None:
            scores = (scores * outputs.pred_quality.float().sigmoid()[..., None]).sqrt_()
        return scores

    def decode_boxes(self, outputs: DenseOutputs, batch_idx: Tensor, anchor_idx: Tensor) -> Tensor:
        deltas = outputs.pred_regression[batch_idx, anchor_idx].float()  # (P, 4)
        return self.box_coder.decode(deltas, outputs.anchors[anchor_idx])
