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
from typing import Callable

import torch
from torch import Tensor, nn

from detector.assigners import IGNORE
from detector.boxes import DistancePointCoder, box_iou_paired
from detector.losses import distribution_focal_loss, integral_distribution
from detector.models.heads.common import (Scale, anchor_centres, assign_targets, conv_tower, flatten_level,
                                          mean_over_processes, prediction_conv)
from detector.models.postprocess import nms_per_image, select_candidates


class GFLHead(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, strides: list[int], assigner,
                 cls_loss: Callable[..., Tensor], box_loss: Callable[..., Tensor], soft_cls_targets: bool = True,
                 use_dfl: bool = True, reg_max: int = 16, num_convs: int = 4, feat_channels: int = 256,
                 norm: str | None = "gn", prior_prob: float = 0.01, cls_loss_weight: float = 1.0,
                 box_loss_weight: float = 2.0, dfl_loss_weight: float = 0.25, score_thr: float = 0.05,
                 topk_per_level: int = 1000, nms_iou: float = 0.6, max_dets: int = 100):
        super().__init__()
        if reg_max < 1:
            raise ValueError(f"reg_max must be >= 1, got {reg_max}")
        self.num_classes = num_classes
        self.strides = list(strides)
        self.reg_max = reg_max
        tower_out = feat_channels if num_convs > 0 else in_channels
        self.cls_tower = conv_tower(in_channels, feat_channels, num_convs, norm)
        self.box_tower = conv_tower(in_channels, feat_channels, num_convs, norm)
        self.cls_logits = prediction_conv(tower_out, num_classes, bias_value=-math.log((1 - prior_prob) / prior_prob))
        self.box_bins = prediction_conv(tower_out, 4 * (reg_max + 1))
        self.scales = nn.ModuleList(Scale() for _ in strides)
        self.assigner = assigner
        self.coder = DistancePointCoder()
        self.cls_loss, self.soft_cls_targets = cls_loss, soft_cls_targets
        self.box_loss, self.use_dfl = box_loss, use_dfl
        self.cls_loss_weight, self.box_loss_weight, self.dfl_loss_weight = \
            cls_loss_weight, box_loss_weight, dfl_loss_weight
        self.score_thr, self.topk_per_level = score_thr, topk_per_level
        self.nms_iou, self.max_dets = nms_iou, max_dets

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Joint class-IoU logits (B, N, K) and side distributions (B, N, 4, reg_max + 1)."""
        cls_out, box_out = [], []
        for feature, scale in zip(features, self.scales):
            cls_out.append(flatten_level(self.cls_logits(self.cls_tower(feature)), self.num_classes))
            box_out.append(flatten_level(scale(self.box_bins(self.box_tower(feature))), 4 * (self.reg_max + 1)))
        bins = torch.cat(box_out, dim=1)
        return torch.cat(cls_out, dim=1), bins.view(*bins.shape[:2], 4, self.reg_max + 1)

    def _anchor_strides(self, num_anchors_per_level: list[int], device: torch.device) -> Tensor:
        strides = torch.tensor(self.strides, dtype=torch.float32, device=device)
        return torch.repeat_interleave(strides, torch.tensor(num_anchors_per_level, device=device))  # (N,)

    def loss(self, outputs: tuple, anchors: Tensor, num_anchors_per_level: list[int],
             targets: list[dict]) -> dict[str, Tensor]:
        pred_logits, pred_bins = outputs
        gt, assigned = assign_targets(self.assigner, anchors, num_anchors_per_level, targets)  # (B, N)
        positive = assigned >= 0
        num_pos = mean_over_processes(positive.sum().float()).clamp(min=1.0)
        batch_idx, anchor_idx = positive.nonzero(as_tuple=True)  # (P,)
        pos_gt = assigned[batch_idx, anchor_idx]
        matched_gt = gt.boxes[batch_idx, pos_gt]  # (P, 4)
        stride = self._anchor_strides(num_anchors_per_level, anchors.device)[anchor_idx][:, None]  # (P, 1)
        centres = anchor_centres(anchors[anchor_idx])  # (P, 2)
        pos_bins = pred_bins[batch_idx, anchor_idx].float()  # (P, 4, R + 1)
        pos_boxes = self.coder.decode(centres, integral_distribution(pos_bins) * stride)  # (P, 4)
        pos_iou = box_iou_paired(pos_boxes.detach(), matched_gt)  # (P,)

        cls_targets = torch.zeros_like(pred_logits, dtype=torch.float32)  # (B, N, K)
        cls_targets[batch_idx, anchor_idx, gt.labels[batch_idx, pos_gt]] = pos_iou if self.soft_cls_targets else 1.0
        cls_per_anchor = self.cls_loss(pred_logits.float(), cls_targets, reduction="none").sum(dim=2)  # (B, N)
        losses = {"loss_cls": self.cls_loss_weight * (cls_per_anchor * (assigned != IGNORE)).sum() / num_pos}

        weight = pred_logits[batch_idx, anchor_idx].detach().float().sigmoid().max(dim=1).values  # (P,)
        normaliser = mean_over_processes(weight.sum()).clamp(min=1.0)
        box_terms = self.box_loss(pos_boxes, matched_gt, reduction="none")  # (P,)
        losses["loss_box"] = self.box_loss_weight * (box_terms * weight).sum() / normaliser
        if self.use_dfl:
            side_targets = self.coder.encode(centres, matched_gt, max_distance=None) / stride  # (P, 4)
            side_targets = side_targets.clamp(min=0, max=self.reg_max - 0.1)
            dfl = distribution_focal_loss(pos_bins.reshape(-1, self.reg_max + 1), side_targets.reshape(-1),
                                          reduction="none").view(-1, 4).mean(dim=1)  # (P,)
            losses["loss_dfl"] = self.dfl_loss_weight * (dfl * weight).sum() / normaliser
        return losses

    @torch.no_grad()
    def predict(self, outputs: tuple, anchors: Tensor, num_anchors_per_level: list[int],
                image_size: tuple[int, int]) -> list[dict]:
        pred_logits, pred_bins = outputs
        candidates = select_candidates(pred_logits.float().sigmoid(), num_anchors_per_level, self.score_thr,
                                       self.topk_per_level)
        stride = self._anchor_strides(num_anchors_per_level, anchors.device)[candidates.anchor_idx][:, None]
        distances = integral_distribution(pred_bins[candidates.batch_idx, candidates.anchor_idx].float()) * stride
        boxes = self.coder.decode(anchor_centres(anchors[candidates.anchor_idx]), distances)
        return nms_per_image(boxes, candidates, pred_logits.shape[0], image_size, self.nms_iou, self.max_dets)
