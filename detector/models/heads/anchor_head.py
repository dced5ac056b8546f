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
    loss_box     = w_box * sum_{positives} w_i box_loss_i / W, by ``box_weighting``:
                   none:       w_i = 1, W = N_pos;
                   centerness: w_i = centerness target c_i, W = max(mean over processes of sum_i c_i, 1e-6) (ATSS);
                   iou_target: w_i = u_i, the IoU of the positive's decoded box with its ground truth (detached),
                               W = max(sum over processes of sum_i u_i, 1) / world_size (the official EFL code;
                               after DDP averages the gradients, the weighted mean over all processes' positives)
    loss_quality = w_q * sum_{positives} BCE(quality logit, centerness or IoU target) / N_pos

N_pos and W are sums over the batch (:meth:`AnchorHead.normaliser_sums`: P, sum_i c_i or sum_i u_i), reduced
over processes in one all-reduce; gradient accumulation passes those of the whole step's batch to ``loss``
(:mod:`detector.engine.accumulation`), so every weighting gives the update of the batch in one piece.

Assignment and losses run over the whole batch at once (ground truths padded per batch). At inference the
score is p = sigmoid(cls), or with a quality branch p fused with q = sigmoid(quality): sqrt(p q) or p q
(``InferenceParams.quality_fusion``).
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
BOX_WEIGHTINGS = ("none", "centerness", "iou_target")


class AnchorHead(DenseHead):
    """Towers, outputs, loss and inference decoding of RetinaNet-style anchor heads."""

    def __init__(self, *, num_classes: int, num_anchors: int, num_levels: int, tower: TowerSpec, assigner: Assigner,
                 box_coder: DeltaBoxCoder, cls_loss: ClassificationLoss, box_loss: BoxLoss, prior_prob: float = 0.01,
                 quality_branch: str | None = None, box_weighting: str = "none", scale_per_level: bool = False,
                 loss_weights: LossWeights = LossWeights(), inference: InferenceParams = InferenceParams()):
        if quality_branch not in QUALITY_BRANCHES:
            raise ValueError(f"quality_branch must be one of {QUALITY_BRANCHES}, got {quality_branch!r}")
        if box_weighting not in BOX_WEIGHTINGS:
            raise ValueError(f"box_weighting must be one of {BOX_WEIGHTINGS}, got {box_weighting!r}")
        super().__init__(num_classes=num_classes, assigner=assigner, cls_loss=cls_loss, loss_weights=loss_weights,
                         inference=inference)
        self.num_anchors = num_anchors
        self.cls_tower = tower.build()
        self.box_tower = tower.build()
        self.cls_logits = prediction_conv(tower.out_channels, num_anchors * num_classes,
                                          bias_value=-math.log((1 - prior_prob) / prior_prob))
        self.box_deltas = prediction_conv(tower.out_channels, num_anchors * 4)
        self.quality_branch = quality_branch
        self.box_weighting = box_weighting
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
        """N_pos at least 1; the centerness sum at least 1e-6; the IoU-target sum at least 1 (before the division
        by the world size, see :attr:`normalisers_clamped_as_totals`)."""
        minimums = {"num_pos": 1.0}
        if self.box_weighting == "centerness":
            minimums["centerness"] = 1e-6
        elif self.box_weighting == "iou_target":
            minimums["iou_target"] = 1.0
        return minimums

    normalisers_clamped_as_totals = frozenset({"iou_target"})

    def _positive_boxes(self, outputs: DenseOutputs, pos: Positives) -> tuple[Tensor, Tensor, Tensor]:
        """The positives' anchors (P, 4), predicted deltas (P, 4) in fp32 and decoded boxes (P, 4)."""
        pos_anchors = outputs.anchors[pos.anchor_idx]  # (P, 4)
        pos_deltas = outputs.pred_regression[pos.batch_idx, pos.anchor_idx].float()  # (P, 4)
        return pos_anchors, pos_deltas, self.box_coder.decode(pos_deltas, pos_anchors)

    def normaliser_sums(self, outputs: DenseOutputs, pos: Positives) -> dict[str, Tensor]:
        """P, and the sum of the box weights (centerness or IoU targets, computed as :meth:`loss` does)."""
        pos_anchors, _, pos_boxes = self._positive_boxes(outputs, pos)
        centerness = centerness_target(anchor_centres(pos_anchors), pos.gt_boxes) if (
            self.box_weighting == "centerness") else None  # (P,)
        pos_iou = box_iou_paired(pos_boxes.detach(), pos.gt_boxes) if self.box_weighting == "iou_target" else None
        return self._weight_sums(pos, centerness, pos_iou)

    def _weight_sums(self, pos: Positives, centerness: Tensor | None, pos_iou: Tensor | None) -> dict[str, Tensor]:
        sums = {"num_pos": pos.local_num_pos}
        if self.box_weighting == "centerness":
            sums["centerness"] = centerness.sum()
        elif self.box_weighting == "iou_target":
            sums["iou_target"] = pos_iou.sum()
        return sums

    def loss(self, outputs: DenseOutputs, targets: list[dict],
             normalisers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        pos = self.match(outputs, targets)
        pos_anchors, pos_deltas, pos_boxes = self._positive_boxes(outputs, pos)  # (P, 4) each
        pos_iou = box_iou_paired(pos_boxes.detach(), pos.gt_boxes) if (
            self.cls_loss.soft_targets or self.quality_branch == "iou" or self.box_weighting == "iou_target") else None
        centerness = centerness_target(anchor_centres(pos_anchors), pos.gt_boxes) if (
            "centerness" in (self.quality_branch, self.box_weighting)) else None  # (P,)
        norm = normalisers if normalisers is not None else self.reduce_normalisers(
            self._weight_sums(pos, centerness, pos_iou))
        losses = {"loss_cls": self.classification_loss(outputs.pred_logits, pos, pos_iou, norm["num_pos"])}

        weights = self.loss_weights
        if self.box_loss.on_boxes:
            box_terms = self.box_loss(pos_boxes, pos.gt_boxes, reduction="none")  # (P,)
        else:
            box_terms = self.box_loss(pos_deltas, self.box_coder.encode(pos.gt_boxes, pos_anchors),
                                      reduction="none").sum(dim=1)  # (P,)
        box_sum, normaliser = self._weighted_box_terms(box_terms, centerness, pos_iou, norm)
        losses["loss_box"] = weights.box * box_sum / normaliser
        if self.quality_branch is None:
            return losses
        quality_target = centerness if self.quality_branch == "centerness" else pos_iou
        pos_quality = outputs.pred_quality[pos.batch_idx, pos.anchor_idx].float()  # (P,)
        losses["loss_quality"] = weights.quality * F.binary_cross_entropy_with_logits(
            pos_quality, quality_target, reduction="sum") / norm["num_pos"]
        return losses

    def _weighted_box_terms(self, box_terms: Tensor, centerness: Tensor | None, pos_iou: Tensor | None,
                            norm: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(sum_i w_i box_loss_i, W) of the module docstring for ``box_weighting``: box_terms, centerness and
        pos_iou (P,); W taken from the reduced normalisers ``norm``."""
        if self.box_weighting == "centerness":
            return (box_terms * centerness).sum(), norm["centerness"]
        if self.box_weighting == "iou_target":
            return (box_terms * pos_iou).sum(), norm["iou_target"]
        return box_terms.sum(), norm["num_pos"]

    def pred_class_probs(self, outputs: DenseOutputs) -> Tensor:
        """sigmoid(cls) (B, N, K)."""
        return outputs.pred_logits.float().sigmoid()

    def pred_quality_probs(self, outputs: DenseOutputs) -> Tensor | None:
        """sigmoid(quality) (B, N) of the centerness / IoU branch, or None without one."""
        return None if outputs.pred_quality is None else outputs.pred_quality.float().sigmoid()

    def decode_boxes(self, outputs: DenseOutputs, batch_idx: Tensor, anchor_idx: Tensor) -> Tensor:
        deltas = outputs.pred_regression[batch_idx, anchor_idx].float()  # (P, 4)
        return self.box_coder.decode(deltas, outputs.anchors[anchor_idx])
