"""Max-IoU anchor assignment (RetinaNet, Lin et al. 2017; Faster R-CNN's rule with 0.5 / 0.4 thresholds).

Codes per anchor follow torchvision's Matcher: a gt index >= 0 (positive), ``BACKGROUND`` (-1) or
``IGNORE`` (-2). The batched version (the signature of :mod:`detector.assigners.base`) takes ground truths
padded per image and works on the ``(B, G, A)`` IoU matrix without Python loops over images or anchors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.assigners.base import (BACKGROUND, IGNORE, PaddedTargets, check_padded_targets,
                                     ignore_crowd_regions)
from detector.boxes import box_iou_batched

__all__ = ["MaxIoUAssigner"]


class MaxIoUAssigner:
    """Assign each anchor to the ground truth it overlaps most.

    For anchor a with IoU_max(a) = max_g IoU(g, a) over the valid ground truths:
      - IoU_max >= pos_iou_thr: positive, matched to argmax_g IoU(g, a);
      - IoU_max <  neg_iou_thr: background (-1);
      - otherwise ignored (-2): neither a positive nor a negative in the losses.
    Low-quality matches (``allow_low_quality_matches``): every valid gt g whose best IoU
    best(g) = max_a IoU(g, a) is > 0 also makes positive every anchor with IoU(g, a) == best(g) (ties all
    count, as on a regular grid several anchors tie exactly). Such an anchor is matched to g; if it is a best
    match of several gts it goes to the one of those with the highest IoU (lowest index on exact ties).
    This differs from torchvision's Matcher in two deliberate ways: best(g) = 0 creates no positives (there,
    a gt overlapping no anchor turns every IoU-0 anchor positive), and the anchor is matched to a gt that
    actually chose it rather than to its overall argmax gt, so the low-quality gt keeps its anchor.
    Ignore (crowd) regions: an anchor that is background after the rules above and whose intersection over
    its own area (IoF) with any ignore box exceeds ``ignore_iof_thr`` becomes ignored (-2); positives stay.
    """

    def __init__(self, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4,
                 allow_low_quality_matches: bool = True, ignore_iof_thr: float = 0.5) -> None:
        if not 0.0 <= neg_iou_thr <= pos_iou_thr <= 1.0:
            raise ValueError(f"need 0 <= neg_iou_thr <= pos_iou_thr <= 1, got {neg_iou_thr}, {pos_iou_thr}")
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.ignore_iof_thr = float(ignore_iof_thr)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(pos_iou_thr={self.pos_iou_thr}, neg_iou_thr={self.neg_iou_thr}, "
                f"allow_low_quality_matches={self.allow_low_quality_matches}, "
                f"ignore_iof_thr={self.ignore_iof_thr})")

    def assign(self, anchors: Tensor, gt_boxes: Tensor, ignore_boxes: Tensor | None = None) -> Tensor:
        """Codes ``(A,)`` for one image: ``anchors (A, 4)``, ``gt_boxes (G, 4)``, ``ignore_boxes (C, 4)``, xyxy."""
        gt_valid = torch.ones((1, gt_boxes.shape[0]), dtype=torch.bool, device=gt_boxes.device)  # (1, G)
        ignore = None if ignore_boxes is None else ignore_boxes.unsqueeze(0)  # (1, C, 4)
        targets = PaddedTargets.from_boxes(gt_boxes.unsqueeze(0), gt_valid, ignore)
        return self.assign_batched(anchors, [anchors.shape[0]], targets)[0]

    @torch.no_grad()
    def assign_batched(self, anchors: Tensor, num_anchors_per_level: list[int], targets: PaddedTargets) -> Tensor:
        """Codes ``(B, A)`` for a batch sharing one anchor set.

        Args:
            anchors: (A, 4) xyxy.
            num_anchors_per_level: not used (one IoU rule over all levels); part of the common signature.
            targets: ``boxes`` (B, G, 4) xyxy padded per image (G may be 0), ``valid`` (B, G) False for padding
                slots (never matched), ``ignore_boxes`` (B, C, 4) crowd regions with their ``ignore_valid``.
        """
        check_padded_targets(targets)
        num_images, num_gts = targets.boxes.shape[:2]
        num_anchors = anchors.shape[0]
        codes = torch.full((num_images, num_anchors), BACKGROUND, dtype=torch.long, device=anchors.device)
        if num_gts > 0 and num_anchors > 0:
            self._match(anchors, targets.boxes, targets.valid, codes)
        if targets.ignore_boxes.shape[1] > 0 and num_anchors > 0:
            ignore_crowd_regions(codes, anchors, targets.ignore_boxes, targets.ignore_valid, self.ignore_iof_thr)
        return codes

    def _match(self, anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, codes: Tensor) -> None:
        """Fill ``codes (B, A)`` in place from the IoU rules."""
        iou = box_iou_batched(gt_boxes, anchors)  # (B, G, A)
        # Padding slots get IoU -1: below every threshold and never a best match (best must be > 0).
        iou.masked_fill_(~gt_valid.unsqueeze(-1), -1.0)
        max_iou, argmax_gt = iou.max(dim=1)  # (B, A), (B, A)
        codes.copy_(argmax_gt)
        codes.masked_fill_(max_iou < self.pos_iou_thr, IGNORE)
        codes.masked_fill_(max_iou < self.neg_iou_thr, BACKGROUND)
        if not self.allow_low_quality_matches:
            return
        best_iou = iou.amax(dim=2, keepdim=True)  # (B, G, 1)
        # A gt overlapping no anchor (best 0) or a padding slot (best -1) must not match: push its target
        # out of reach so that no IoU equals it.
        best_iou.masked_fill_(best_iou <= 0, 2.0)
        # Keep IoU only where the anchor is one of that gt's best matches; -1 elsewhere (in place: the
        # full IoU matrix is not needed any more).
        iou.masked_fill_(iou != best_iou, -1.0)
        low_quality_iou, low_quality_gt = iou.max(dim=1)  # (B, A): best-match gt with the highest IoU
        is_low_quality = low_quality_iou > 0  # (B, A)
        codes.copy_(torch.where(is_low_quality, low_quality_gt, codes))

