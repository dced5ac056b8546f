"""Generalized Focal Loss head (Li et al., "Generalized Focal Loss", NeurIPS 2020).

One anchor point per location, GroupNorm towers, a learnable scale per level. The classification branch
predicts the joint class-IoU score sigma; the box branch predicts, for each side (l, t, r, b), a discrete
distribution S over reg_max + 1 bins whose expectation sum_i S_i * i, times the stride, is the distance from
the anchor centre to that side ("integral" decoding). With N_pos positives (ATSS) averaged over processes:

    loss_cls  = QFL(sigma, y) summed over all anchors and classes / N_pos,  y = IoU(decoded box, gt) at the
                positive's class (detached), 0 elsewhere;
    loss_box  = 2.0 * sum_pos w * (1 - GIoU) / W,    loss_dfl = 0.25 * sum_pos w * mean_sides DFL / W,
                w = max_k sigma_k (detached) per positive, W = sum of w averaged over processes (at least 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detector.assigners.base import Assigner
from detector.boxes import DistancePointCoder, box_iou_paired
from detector.losses import BoxLoss, ClassificationLoss, distribution_focal_loss, integral_distribution
from detector.models.heads.base import DenseHead, LossWeights, Positives
from detector.models.heads.common import Scale, TowerSpec, anchor_centres, flatten_level, prediction_conv
from detector.models.outputs import DenseOutputs
from detector.models.postprocess import InferenceParams


class GFLHead(DenseHead):
    """Towers, joint class-IoU scores, side distributions, GFL losses and integral decoding."""

    def __init__(self, *, num_classes: int, strides: list[int], tower: TowerSpec, assigner: Assigner,
                 cls_loss: ClassificationLoss, box_loss: BoxLoss, use_dfl: bool = True, reg_max: int = 16,
                 prior_prob: float = 0.01, loss_weights: LossWeights = LossWeights(box=2.0, dfl=0.25),
                 inference: InferenceParams = InferenceParams(nms_iou=0.6)):
        if reg_max < 1:
            raise ValueError(f"reg_max must be >= 1, got {reg_max}")
        if not box_loss.on_boxes:
            raise ValueError(f"the GFL head trains its box loss on decoded boxes (GIoU), got {box_loss!r}")
        super().__init__(num_classes=num_classes, assigner=assigner, cls_loss=cls_loss, loss_weights=loss_weights,
                         inference=inference)
        self.strides = list(strides)
        self.reg_max = reg_max
        self.cls_tower = tower.build()
        self.box_tower = tower.build()
        self.cls_logits = prediction_conv(tower.out_channels, num_classes,
                                          bias_value=-math.log((1 - prior_prob) / prior_prob))
        self.box_bins = prediction_conv(tower.out_channels, 4 * (reg_max + 1))
        self.scales = nn.ModuleList(Scale() for _ in strides)
        self.coder = DistancePointCoder()
        self.box_loss, self.use_dfl = box_loss, use_dfl

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, None]:
        """Joint class-IoU logits (B, N, K), side distributions (B, N, 4, reg_max + 1) and no quality output."""
        cls_out, box_out = [], []
        for feature, scale in zip(features, self.scales):
            cls_out.append(flatten_level(self.cls_logits(self.cls_tower(feature)), self.num_classes))
            box_out.append(flatten_level(scale(self.box_bins(self.box_tower(feature))), 4 * (self.reg_max + 1)))
        bins = torch.cat(box_out, dim=1)
        return torch.cat(cls_out, dim=1), bins.view(*bins.shape[:2], 4, self.reg_max + 1), None

    def _anchor_strides(self, num_anchors_per_level: list[int], device: torch.device) -> Tensor:
        # one full() per level rather than repeat_interleave over a tensor of the counts: a traced graph keeps
        # the counts tied to the feature shapes (a tensor of them would be a constant)
        return torch.cat([torch.full((count,), float(stride), device=device)
                          for stride, count in zip(self.strides, num_anchors_per_level)])  # (N,)

    normaliser_minimums = {"num_pos": 1.0, "box_weight": 1.0}

    @staticmethod
    def _box_weights(outputs: DenseOutputs, pos: Positives) -> Tensor:
        """(P,) w = max_k sigma_k of each positive (detached): the weight of its box and DFL terms."""
        return outputs.pred_logits[pos.batch_idx, pos.anchor_idx].detach().float().sigmoid().max(dim=1).values

    def normaliser_sums(self, outputs: DenseOutputs, pos: Positives) -> dict[str, Tensor]:
        return {"num_pos": pos.local_num_pos, "box_weight": self._box_weights(outputs, pos).sum()}

    def loss(self, outputs: DenseOutputs, targets: list[dict],
             normalisers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        pred_logits, pred_bins, anchors = outputs.pred_logits, outputs.pred_regression, outputs.anchors
        pos = self.match(outputs, targets)
        norm = normalisers if normalisers is not None else self.reduce_normalisers(self.normaliser_sums(outputs, pos))
        stride = self._anchor_strides(outputs.num_anchors_per_level, anchors.device)[pos.anchor_idx][:, None]  # (P, 1)
        centres = anchor_centres(anchors[pos.anchor_idx])  # (P, 2)
        pos_bins = pred_bins[pos.batch_idx, pos.anchor_idx].float()  # (P, 4, R + 1)
        pos_boxes = self.coder.decode(centres, integral_distribution(pos_bins) * stride)  # (P, 4)
        pos_iou = box_iou_paired(pos_boxes.detach(), pos.gt_boxes)  # (P,)
        losses = {"loss_cls": self.classification_loss(pred_logits, pos, pos_iou, norm["num_pos"])}

        weights = self.loss_weights
        weight = self._box_weights(outputs, pos)  # (P,)
        box_terms = self.box_loss(pos_boxes, pos.gt_boxes, reduction="none")  # (P,)
        losses["loss_box"] = weights.box * (box_terms * weight).sum() / norm["box_weight"]
        if self.use_dfl:
            side_targets = self.coder.encode(centres, pos.gt_boxes, max_distance=None) / stride  # (P, 4)
            side_targets = side_targets.clamp(min=0, max=self.reg_max - 0.1)
            dfl = distribution_focal_loss(pos_bins.reshape(-1, self.reg_max + 1), side_targets.reshape(-1),
                                          reduction="none").view(-1, 4).mean(dim=1)  # (P,)
            losses["loss_dfl"] = weights.dfl * (dfl * weight).sum() / norm["box_weight"]
        return losses

    def pred_class_probs(self, outputs: DenseOutputs) -> Tensor:
        """sigmoid of the joint class-IoU logits (B, N, K): the detection score itself (no quality branch)."""
        return outputs.pred_logits.float().sigmoid()

    def decode_boxes(self, outputs: DenseOutputs, batch_idx: Tensor, anchor_idx: Tensor) -> Tensor:
        """Integral decoding: each side's distance is the expectation of its bins times the level's stride."""
        stride = self._anchor_strides(outputs.num_anchors_per_level, outputs.anchors.device)[anchor_idx][:, None]
        distances = integral_distribution(outputs.pred_regression[batch_idx, anchor_idx].float()) * stride  # (P, 4)
        return self.coder.decode(anchor_centres(outputs.anchors[anchor_idx]), distances)
