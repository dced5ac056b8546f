"""DenseHead: the one shallow base of the dense heads, holding what their losses and inference share.

Training, for every head: assign the batch's anchors (the configured assigner, ground truths padded per batch),
keep the positives with their matched ground truths, and compute the classification loss over every
non-ignored anchor; with N_pos the number of positive anchors in the batch averaged over processes (at least 1):

    loss_cls = w_cls * sum_{non-ignored anchors a, classes k} cls_loss(x_ak, y_ak) / N_pos

Loss normalisers. Every loss term is a sum over the batch divided by a normaliser that is itself a sum over the
batch (N_pos; the sum of centerness or IoU targets; GFL's sum of box weights), averaged over processes and
clamped from below (:meth:`DenseHead.reduce_normalisers`; the IoU-target sum is clamped before the division by
the world size, as the official EFL code does). ``loss(outputs, targets, normalisers)`` accepts them from
outside: gradient accumulation (:mod:`detector.engine.accumulation`) sums :meth:`DenseHead.loss_normaliser_sums`
over the micro-batches of one step first, so each micro-batch is divided by the whole batch's normalisers and
the micro-batch losses add up to the loss of the batch in one piece.

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
from detector.runtime.distributed import all_reduce_sum, get_world_size

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
    local_num_pos: Tensor  # () float, P: positives in this process's batch (not reduced over processes)


class DenseHead(nn.Module, ABC):
    """Assignment, positives, classification loss and inference post-processing of a dense head.

    ``normaliser_minimums``: the lower clamp of each loss normaliser (after averaging over processes), by name;
    a head adds its own normalisers to N_pos's. ``normalisers_clamped_as_totals``: the names whose sum over
    processes is clamped first and then divided by the world size, max(S, m) / W instead of max(S / W, m).
    """

    normaliser_minimums: dict[str, float] = {"num_pos": 1.0}
    normalisers_clamped_as_totals: frozenset[str] = frozenset()

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
        batch_idx, anchor_idx = positive.nonzero(as_tuple=True)  # (P,) each
        pos_gt = assigned[batch_idx, anchor_idx]  # (P,)
        return Positives(assigned, batch_idx, anchor_idx, gt.boxes[batch_idx, pos_gt], gt.labels[batch_idx, pos_gt],
                         positive.sum().float())

    def classification_loss(self, pred_logits: Tensor, pos: Positives, pos_scores: Tensor | None,
                            num_pos: Tensor) -> Tensor:
        """w_cls * sum over non-ignored anchors and classes / ``num_pos`` (N_pos); ``pos_scores`` (P,) are the
        soft targets (IoUs) a soft-target loss is trained on (unused, may be None, for one-hot losses)."""
        cls_targets = torch.zeros_like(pred_logits, dtype=torch.float32)  # (B, N, K)
        cls_targets[pos.batch_idx, pos.anchor_idx, pos.gt_labels] = pos_scores if self.cls_loss.soft_targets else 1.0
        cls_per_anchor = self.cls_loss(pred_logits.float(), cls_targets, reduction="none").sum(dim=2)  # (B, N)
        return self.loss_weights.cls * (cls_per_anchor * (pos.assigned != IGNORE)).sum() / num_pos

    def loss_normaliser_sums(self, outputs: DenseOutputs, targets: list[dict]) -> dict[str, Tensor]:
        """This process's sums behind the loss normalisers of ``targets`` (nothing reduced over processes):
        what :meth:`loss` divides by, once summed over micro-batches and passed through :meth:`reduce_normalisers`."""
        return self.normaliser_sums(outputs, self.match(outputs, targets))

    def reduce_normalisers(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """Average each sum over processes (one all-reduce for all of them) and clamp it from below
        (:attr:`normaliser_minimums`; :attr:`normalisers_clamped_as_totals` before the averaging): the
        normalisers :meth:`loss` divides by."""
        names = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[name].float() for name in names]))  # (len(names),)
        world_size = get_world_size()
        reduced = {}
        for index, name in enumerate(names):
            minimum = self.normaliser_minimums[name]
            if name in self.normalisers_clamped_as_totals:
                reduced[name] = totals[index].clamp(min=minimum) / world_size
            else:
                reduced[name] = (totals[index] / world_size).clamp(min=minimum)
        return reduced

    @abstractmethod
    def normaliser_sums(self, outputs: DenseOutputs, pos: Positives) -> dict[str, Tensor]:
        """The sums behind the head's loss normalisers for one batch's positives, by name (``num_pos`` first)."""

    @abstractmethod
    def loss(self, outputs: DenseOutputs, targets: list[dict],
             normalisers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The head's losses (scalars) for ``targets``: per image ``boxes`` (G, 4) xyxy, ``labels`` (G,).
        ``normalisers`` (reduced, as :meth:`reduce_normalisers` returns them) replace the batch's own."""

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
        return nms_fixed_layout(boxes, candidates.scores, candidates.labels, candidates.batch_idx, scores.shape[0],
                                image_sizes, self.num_classes, params.nms_iou, params.max_dets)

    @torch.no_grad()
    def predict(self, outputs: DenseOutputs, image_sizes=None) -> list[dict]:
        """Detections per image: ``boxes`` (M, 4) xyxy in input pixels, clipped to the image, ``scores`` (M,),
        ``labels`` (M,). ``image_sizes``: each image's (h, w) after the resize, before the batch padding, as B
        pairs or a (B, 2) tensor; None clips every image to the padded input."""
        num_images = outputs.pred_logits.shape[0]
        sizes = image_sizes_tensor(image_sizes, outputs.image_size, num_images, outputs.pred_logits.device)  # (B, 2)
        return unpad_detections(self.detect(outputs, sizes))
