"""Anchor-based dense head: RetinaNet, ATSS and the EFL improved baseline.

RetinaNet (Lin et al. 2017): two towers shared across the FPN levels, not with each other; a classification
output of A * K sigmoid logits per location (bias -log((1 - pi) / pi), pi = prior_prob) and a box output of
A * 4 deltas. ATSS (Zhang et al. 2020) adds GroupNorm towers, a learnable scale per level on the deltas and a
centerness branch; the EFL improved baseline (Li et al. 2022) uses an IoU branch instead.

Training assigns anchors with the configured assigner (MaxIoU or ATSS), then, with N_pos the number of
positive anchors in the batch averaged over processes (at least 1):

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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.assigners import IGNORE
from detector.boxes import DeltaBoxCoder, box_iou_paired
from detector.models.heads.common import (Scale, anchor_centres, assign_targets, centerness_target, conv_tower,
                                          flatten_level, mean_over_processes, prediction_conv)
from detector.models.postprocess import nms_per_image, select_candidates

QUALITY_BRANCHES = (None, "centerness", "iou")


class AnchorHead(nn.Module):
    """Towers, outputs, loss and inference decoding of RetinaNet-style anchor heads."""

    def __init__(self, num_classes: int, in_channels: int, num_anchors: int, num_levels: int, assigner,
                 box_coder: DeltaBoxCoder, cls_loss: Callable[..., Tensor], box_loss: Callable[..., Tensor],
                 soft_cls_targets: bool = False, box_loss_on_boxes: bool = False, num_convs: int = 4,
                 feat_channels: int = 256, norm: str | None = None, prior_prob: float = 0.01,
                 quality_branch: str | None = None, scale_per_level: bool = False, cls_loss_weight: float = 1.0,
                 box_loss_weight: float = 1.0, quality_loss_weight: float = 1.0, score_thr: float = 0.05,
                 topk_per_level: int = 1000, nms_iou: float = 0.5, max_dets: int = 100):
        super().__init__()
        if quality_branch not in QUALITY_BRANCHES:
            raise ValueError(f"quality_branch must be one of {QUALITY_BRANCHES}, got {quality_branch!r}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        tower_out = feat_channels if num_convs > 0 else in_channels
        self.cls_tower = conv_tower(in_channels, feat_channels, num_convs, norm)
        self.box_tower = conv_tower(in_channels, feat_channels, num_convs, norm)
        self.cls_logits = prediction_conv(tower_out, num_anchors * num_classes,
                                          bias_value=-math.log((1 - prior_prob) / prior_prob))
        self.box_deltas = prediction_conv(tower_out, num_anchors * 4)
        self.quality_branch = quality_branch
        self.quality_logits = prediction_conv(tower_out, num_anchors) if quality_branch else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels)) if scale_per_level else None
        self.assigner = assigner
        self.box_coder = box_coder
        self.cls_loss = cls_loss                    # (logits (..., K), targets (..., K), reduction) -> loss
        self.soft_cls_targets = soft_cls_targets    # True: IoU-valued targets (QFL); False: one-hot
        self.box_loss = box_loss                    # (pred (P, 4), target (P, 4), reduction) -> loss
        self.box_loss_on_boxes = box_loss_on_boxes  # True: compare decoded boxes (GIoU); False: deltas
        self.cls_loss_weight, self.box_loss_weight = cls_loss_weight, box_loss_weight
        self.quality_loss_weight = quality_loss_weight
        self.score_thr, self.topk_per_level = score_thr, topk_per_level
        self.nms_iou, self.max_dets = nms_iou, max_dets

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

    def loss(self, outputs: tuple, anchors: Tensor, num_anchors_per_level: list[int],
             targets: list[dict]) -> dict[str, Tensor]:
        pred_logits, pred_deltas, pred_quality = outputs
        gt, assigned = assign_targets(self.assigner, anchors, num_anchors_per_level, targets)
        positive = assigned >= 0  # (B, N)
        num_pos = mean_over_processes(positive.sum().float()).clamp(min=1.0)
        batch_idx, anchor_idx = positive.nonzero(as_tuple=True)  # (P,) each
        pos_gt = assigned[batch_idx, anchor_idx]  # (P,)
        matched_gt = gt.boxes[batch_idx, pos_gt]  # (P, 4)
        pos_anchors = anchors[anchor_idx]  # (P, 4)
        pos_deltas = pred_deltas[batch_idx, anchor_idx].float()  # (P, 4)
        pos_boxes = self.box_coder.decode(pos_deltas, pos_anchors)  # (P, 4)
        pos_iou = box_iou_paired(pos_boxes.detach(), matched_gt) if (
            self.soft_cls_targets or self.quality_branch == "iou") else None  # (P,)

        cls_targets = torch.zeros_like(pred_logits, dtype=torch.float32)  # (B, N, K)
        cls_targets[batch_idx, anchor_idx, gt.labels[batch_idx, pos_gt]] = pos_iou if self.soft_cls_targets else 1.0
        cls_per_anchor = self.cls_loss(pred_logits.float(), cls_targets, reduction="none").sum(dim=2)  # (B, N)
        losses = {"loss_cls": self.cls_loss_weight * (cls_per_anchor * (assigned != IGNORE)).sum() / num_pos}

        if self.box_loss_on_boxes:
            box_terms = self.box_loss(pos_boxes, matched_gt, reduction="none")  # (P,)
        else:
            box_terms = self.box_loss(pos_deltas, self.box_coder.encode(matched_gt, pos_anchors),
                                      reduction="none").sum(dim=1)  # (P,)
        if self.quality_branch is None:
            losses["loss_box"] = self.box_loss_weight * box_terms.sum() / num_pos
            return losses
        if self.quality_branch == "centerness":
            quality_target = centerness_target(anchor_centres(pos_anchors), matched_gt)  # (P,)
            normaliser = mean_over_processes(quality_target.sum()).clamp(min=1e-6)
            losses["loss_box"] = self.box_loss_weight * (box_terms * quality_target).sum() / normaliser
        else:
            quality_target = pos_iou
            losses["loss_box"] = self.box_loss_weight * box_terms.sum() / num_pos
        pos_quality = pred_quality[batch_idx, anchor_idx].float()  # (P,)
        losses["loss_quality"] = self.quality_loss_weight * F.binary_cross_entropy_with_logits(
            pos_quality, quality_target, reduction="sum") / num_pos
        return losses

    @torch.no_grad()
    def predict(self, outputs: tuple, anchors: Tensor, num_anchors_per_level: list[int],
                image_size: tuple[int, int]) -> list[dict]:
        pred_logits, pred_deltas, pred_quality = outputs
        scores = pred_logits.float().sigmoid()  # (B, N, K)
        if pred_quality is not None:
            scores = (scores * pred_quality.float().sigmoid()[..., None]).sqrt_()
        candidates = select_candidates(scores, num_anchors_per_level, self.score_thr, self.topk_per_level)
        deltas = pred_deltas[candidates.batch_idx, candidates.anchor_idx].float()
        boxes = self.box_coder.decode(deltas, anchors[candidates.anchor_idx])
        return nms_per_image(boxes, candidates, pred_logits.shape[0], image_size, self.nms_iou, self.max_dets)
