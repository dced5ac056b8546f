"""RetinaNet head (Lin et al., "Focal Loss for Dense Object Detection", 2017).

Two subnets shared across the FPN levels, not with each other: a classification tower ending in
A * K sigmoid logits per location (bias -log((1 - pi) / pi), pi = prior_prob) and a box tower ending in
A * 4 deltas. Training assigns anchors with the configured assigner (MaxIoU 0.5 / 0.4 by default), then

    loss_cls = w_cls * sum_{non-ignored anchors, classes} cls_loss(x, y) / N_pos
    loss_box = w_box * sum_{positive anchors} box_loss / N_pos

with N_pos the number of positive anchors in the batch, averaged over processes and at least 1.
Assignment and losses run over the whole batch at once (ground truths padded per batch).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from detector.assigners import IGNORE
from detector.boxes import DeltaBoxCoder
from detector.models.heads.common import (conv_tower, flatten_level, mean_over_processes, pad_targets,
                                          prediction_conv)
from detector.models.postprocess import nms_per_image, select_candidates


class RetinaNetHead(nn.Module):
    """Classification and box subnets plus the loss and the inference decoding of RetinaNet."""

    def __init__(self, num_classes: int, in_channels: int, num_anchors: int, assigner, box_coder: DeltaBoxCoder,
                 cls_loss: Callable[..., Tensor], box_loss: Callable[..., Tensor], box_loss_on_boxes: bool = False,
                 num_convs: int = 4, feat_channels: int = 256, norm: str | None = None, prior_prob: float = 0.01,
                 cls_loss_weight: float = 1.0, box_loss_weight: float = 1.0, score_thr: float = 0.05,
                 topk_per_level: int = 1000, nms_iou: float = 0.5, max_dets: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        tower_out = feat_channels if num_convs > 0 else in_channels
        self.cls_tower = conv_tower(in_channels, feat_channels, num_convs, norm)
        self.box_tower = conv_tower(in_channels, feat_channels, num_convs, norm)
        self.cls_logits = prediction_conv(tower_out, num_anchors * num_classes,
                                          bias_value=-math.log((1 - prior_prob) / prior_prob))
        self.box_deltas = prediction_conv(tower_out, num_anchors * 4)
        self.assigner = assigner
        self.box_coder = box_coder
        self.cls_loss = cls_loss        # (logits (N, K), one-hot targets (N, K), reduction) -> loss
        self.box_loss = box_loss        # (pred (P, 4), target (P, 4), reduction) -> loss
        self.box_loss_on_boxes = box_loss_on_boxes  # True: compare decoded boxes (GIoU); False: deltas
        self.cls_loss_weight = cls_loss_weight
        self.box_loss_weight = box_loss_weight
        self.score_thr, self.topk_per_level = score_thr, topk_per_level
        self.nms_iou, self.max_dets = nms_iou, max_dets

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits (B, A_total, K) and box deltas (B, A_total, 4) over all levels."""
        cls_out = [flatten_level(self.cls_logits(self.cls_tower(f)), self.num_classes) for f in features]
        box_out = [flatten_level(self.box_deltas(self.box_tower(f)), 4) for f in features]
        return torch.cat(cls_out, dim=1), torch.cat(box_out, dim=1)

    def loss(self, pred_logits: Tensor, pred_deltas: Tensor, anchors: Tensor, num_anchors_per_level: list[int],
             targets: list[dict]) -> dict[str, Tensor]:
        gt = pad_targets(targets, anchors.device)
        if getattr(self.assigner, "uses_levels", False):  # ATSS picks candidates level by level
            assigned = self.assigner.assign_batched(anchors, num_anchors_per_level, gt.boxes, gt.valid,
                                                    gt.ignore_boxes, gt.ignore_valid)  # (B, A)
        else:
            assigned = self.assigner.assign_batched(anchors, gt.boxes, gt.valid, gt.ignore_boxes,
                                                    gt.ignore_valid)  # (B, A)
        positive = assigned >= 0  # (B, A)
        num_pos = mean_over_processes(positive.sum().float()).clamp(min=1.0)
        batch_idx, anchor_idx = positive.nonzero(as_tuple=True)  # (P,) each
        pos_gt = assigned[batch_idx, anchor_idx]  # (P,)

        cls_targets = torch.zeros_like(pred_logits, dtype=torch.float32)  # (B, A, K)
        cls_targets[batch_idx, anchor_idx, gt.labels[batch_idx, pos_gt]] = 1.0
        cls_per_anchor = self.cls_loss(pred_logits.float(), cls_targets, reduction="none").sum(dim=2)  # (B, A)
        loss_cls = (cls_per_anchor * (assigned != IGNORE)).sum() / num_pos

        matched_gt = gt.boxes[batch_idx, pos_gt]  # (P, 4)
        pos_anchors = anchors[anchor_idx]  # (P, 4)
        pos_deltas = pred_deltas[batch_idx, anchor_idx].float()  # (P, 4)
        if self.box_loss_on_boxes:
            box_terms = self.box_loss(self.box_coder.decode(pos_deltas, pos_anchors), matched_gt, reduction="none")
        else:
            box_terms = self.box_loss(pos_deltas, self.box_coder.encode(matched_gt, pos_anchors), reduction="none")
        loss_box = box_terms.sum() / num_pos
        return {"loss_cls": self.cls_loss_weight * loss_cls, "loss_box": self.box_loss_weight * loss_box}

    @torch.no_grad()
    def predict(self, pred_logits: Tensor, pred_deltas: Tensor, anchors: Tensor, num_anchors_per_level: list[int],
                image_size: tuple[int, int]) -> list[dict]:
        candidates = select_candidates(pred_logits.float().sigmoid(), num_anchors_per_level, self.score_thr,
                                       self.topk_per_level)
        deltas = pred_deltas[candidates.batch_idx, candidates.anchor_idx].float()
        boxes = self.box_coder.decode(deltas, anchors[candidates.anchor_idx])
        return nms_per_image(boxes, candidates, pred_logits.shape[0], image_size, self.nms_iou, self.max_dets)
