"""DenseHead: the one shallow base of the dense heads, holding what their losses and inference share.

Training, for every head: assign the batch's anchors (the configured assigner, ground truths padded per batch),
keep the positives with their matched ground truths, and compute the classification loss over every
non-ignored anchor; with N_pos the number of positive anchors in the batch averaged over processes (at least 1):

    loss_cls = w_cls * sum_{non-ignored anchors a, classes k} cls_loss(x_ak, y_ak) / N_pos

where y is one-hot at each positive's class, or, for a classification loss with soft targets (QFL, EFL in its
quality form), the IoU of the positive's decoded box with its ground truth (detached). Each head adds its own
box (and quality / DFL) terms. Inference, for every head: class probabilities p (B, N, K) and, with a quality
branch, quality probabilities q (B, N) -> detection scores (p, sqrt(p q) or p q) -> per-level top-k by score
among the pairs whose score (or p alone) passes the threshold -> the head decodes boxes for those candidates
only -> each clipped to its own image -> one batched class-aware NMS (detector.models.postprocess).

A head implements ``forward(features) -> (pred_logits, pred_regression, pred_quality)``, ``loss(outputs,
targets)``, ``pred_class_probs(outputs)``, ``pred_quality_probs(outputs)`` (None without a quality branch) and
``decode_boxes(outputs, batch_idx, anchor_idx)``; ``pred_scores(outputs)`` fuses the first two. They are tensor
operations over any subset of anchors, so an export path can score and decode all of them into fixed-layout
tensors with the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from detector.assigners import IGNORE, assign_targets
from detector.assigners.base import Assigner
from detector.losses import ClassificationLoss
from detector.models.outputs import DenseOutputs
from detector.models.postprocess import (DetectionBatch, InferenceParams, fuse_quality, image_sizes_tensor,
                                         nms_fixed_layout, select_candidates, unpad_detections)
from detector.runtime.distributed import all_reduce_mean

__all__ = ["DenseHead", "LossWeights", "Positives"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms: classification, box, the anchor heads' quality branch, GFL's DFL."""
    cls: float = 1.0
    box: float = 1.0
    quality: float = 1.0
    dfl: float = 0.25


@dataclass
class Positives:
    """The batch's assignment, reduced to what the losses need (P positive anchors over the batch)."""
    assigned: Tensor   # (B, N) gt index >= 0, BACKGROUND (-1) or IGNORE (-2)
    batch_idx: Tensor  # (P,) image of each positive
    anchor_idx: Tensor  # (P,) anchor of each positive
    gt_boxes: Tensor   # (P, 4) xyxy, the matched ground truth
    gt_labels: Tensor  # (P,) its class
    num_pos: Tensor    # () positives in the batch, averaged over processes, at least 1


class DenseHead(nn.Module, ABC):
    """Assignment, positives, classification loss and inference post-processing of a dense head."""

    def __init__(self, *, num_classes: int, assigner: Assigner, cls_loss: ClassificationLoss,
                 loss_weights: LossWeights, inference: InferenceParams):
        super().__init__()
        self.num_classes = num_classes
        self.assigner = assigner
        self.cls_loss = cls_loss          # (logits (..., K), targets (..., K), reduction) -> loss; .soft_targets
        self.loss_weights = loss_weights
        self.inference = inference

    def match(self, outputs: DenseOutputs, targets: list[dict]) -> Positives:
        """Assign every anchor of the batch and gather the positives with their ground truths."""
        gt, assigned = assign_targets(self.assigner, outputs.anchors, outputs.num_anchors_per_level, targets)
        positive = assigned >= 0  # (B, N)
        num_pos = all_reduce_mean(positive.sum().float()).clamp(min=1.0)
        batch_idx, anchor_idx = positive.nonzero(as_tuple=True)  # (P,) each
        pos_gt = assigned[batch_idx, anchor_idx]  # (P,)
        return Positives(assigned, batch_idx, anchor_idx, gt.boxes[batch_idx, pos_gt], gt.labels[batch_idx, pos_gt],
                         num_pos)

    def classification_loss(self, pred_logits: Tensor, pos: Positives, pos_scores: Tensor | None) -> Tensor:
        """w_cls * sum over non-ignored anchors and classes / N_pos; ``pos_scores`` (P,) are the soft targets
        (IoUs) a soft-target loss is trained on (unused, may be None, for one-hot losses)."""
        cls_targets = torch.zeros_like(pred_logits, dtype=torch.float32)  # (B, N, K)
        cls_targets[pos.batch_idx, pos.anchor_idx, pos.gt_labels] = pos_scores if self.cls_loss.soft_targets else 1.0
        cls_per_anchor = self.cls_loss(pred_logits.float(), cls_targets, reduction="none").sum(dim=2)  # (B, N)
        return self.loss_weights.cls * (cls_per_anchor * (pos.assigned != IGNORE)).sum() / pos.num_pos

    @abstractmethod
    def loss(self, outputs: DenseOutputs, targets: list[dict]) -> dict[str, Tensor]:
        """The head's losses (scalars) for ``targets``: per image ``boxes`` (G, 4) xyxy, ``labels`` (G,)."""

    @abstractmethod
    def pred_class_probs(self, outputs: DenseOutputs) -> Tensor:
        """Class probabilities sigmoid(cls) (B, N, K) in fp32 (GFL: its joint class-IoU score)."""

    def pred_quality_probs(self, outputs: DenseOutputs) -> Tensor | None:
        """Quality probabilities sigmoid(quality) (B, N) in fp32 of a quality branch, or None (no branch)."""
        return None

    def pred_scores(self, outputs: DenseOutputs) -> Tensor:
        """Detection scores (B, N, K) in fp32: the class probability, fused with the quality (``quality_fusion``)."""
        return fuse_quality(self.pred_class_probs(outputs), self.pred_quality_probs(outputs),
                            self.inference.quality_fusion)

    @abstractmethod
    def decode_boxes(self, outputs: DenseOutputs, batch_idx: Tensor, anchor_idx: Tensor) -> Tensor:
        """Boxes (P, 4) xyxy in input pixels of the (image, anchor) pairs ``batch_idx``, ``anchor_idx`` (P,)."""

    @torch.no_grad()
    def detect(self, outputs: DenseOutputs, image_sizes: Tensor) -> DetectionBatch:
        """Detections in the fixed layout (boxes (B, D, 4), scores (B, D), labels (B, D), num_detections (B,); D =
        ``max_dets``), boxes in input pixels clipped to each image's (h, w) in ``image_sizes`` (B, 2). The eager
        ``predict`` and the exported graphs (detector.export) both run this."""
        params = self.inference
        class_probs = self.pred_class_probs(outputs)  # (B, N, K)
        scores = fuse_quality(class_probs, self.pred_quality_probs(outputs), params.quality_fusion)  # (B, N, K)
        threshold_scores = class_probs if params.score_thr_on == "class" else scores
        candidates = select_candidates(scores, outputs.num_anchors_per_level, params, threshold_scores)
        boxes = self.decode_boxes(outputs, candidates.batch_idx, candidates.anchor_idx)
        return nms_fixed_layout(boxes, candidates, scores.shape[0], image_sizes, self.num_classes, params.nms_iou,
                                params.max_dets)

    @torch.no_grad()
    def predict(self, outputs: DenseOutputs, image_sizes=None) -> list[dict]:
        """Detections per image: ``boxes`` (M, 4) xyxy in input pixels, clipped to the image, ``scores`` (M,),
        ``labels`` (M,). ``image_sizes``: each image's (h, w) after the resize, before the batch padding, as B
        pairs or a (B, 2) tensor; None clips every image to the padded input."""
        num_images = outputs.pred_logits.shape[0]
        sizes = image_sizes_tensor(image_sizes, outputs.image_size, num_images, outputs.pred_logits.device)  # (B, 2)
        return unpad_detections(self.detect(outputs, sizes))
