"""Adaptive Training Sample Selection (ATSS; Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020, Algorithm 1).

Codes per anchor follow torchvision's Matcher (:mod:`detector.assigners.base`): a gt index >= 0 (positive),
``BACKGROUND`` (-1) or ``IGNORE`` (-2). The batched version (the common signature) takes ground truths padded
per image; it loops over the FPN levels only, never over images or anchors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.assigners.base import BACKGROUND, PaddedTargets, check_padded_targets, ignore_crowd_regions
from detector.boxes import box_area

__all__ = ["ATSSAssigner"]

# The official ATSS code keeps a positive's centre at least this far (in pixels) inside every gt side.
_INSIDE_MARGIN = 0.01


class ATSSAssigner:
    """ATSS: an IoU threshold chosen per ground truth from the statistics of its nearby anchors.

    For every valid ground truth g (Algorithm 1 of the paper, as the official code sfzhang15/ATSS runs it):
      1. Candidates C_g: on each FPN level l, the ``min(topk, A_l)`` anchors whose centres are closest (L2)
         to the centre of g. ``topk`` counts anchors, not locations: with several anchors per location pass
         the total (the EFL improved baseline: 2 anchors per location, ``topk=18``), where the official code
         multiplies its TOPK by the anchors per location itself.
      2. t_g = mean + std of IoU(g, C_g), where std is the *sample* standard deviation (divisor n - 1, torch's
         default ``.std()``, which the official code calls). With a single candidate in all (a one-anchor
         pyramid) std is taken as 0 instead of torch's NaN.
      3. Positives of g: candidates a with IoU(g, a) >= t_g whose centre lies strictly inside g: the smallest
         of the four centre-to-side distances must exceed 0.01 px (the official code's test).
    An anchor positive for several gts goes to the one with the highest IoU (the lowest gt index on an exact
    tie, as a first-occurrence argmax would); all other anchors are background (-1). Ignore (crowd)
    regions: a background anchor whose intersection over its own area (IoF) with any ignore box exceeds
    ``ignore_iof_thr`` becomes ignored (-2); positives stay, as in ``MaxIoUAssigner``.

    Implementation choices (none changes the algorithm):
      - Distance ties (common on a regular grid, e.g. a gt centre on a cell corner) are broken towards the
        lower anchor index, so the candidate set is deterministic on every device; ``torch.topk`` alone
        leaves the order of equal values unspecified. Squared distances are compared (same order as L2).
      - Only the candidates' IoUs are computed (``B x G x sum_l k_l`` values), never the full (B, G, A)
        IoU matrix: the threshold, the positives and the conflicts between gts all involve candidates only.
        Memory peaks at one level's (B, G, A_l) distances (kept as int64 sort keys).
      - mean / std are taken in float64 from the fp32 IoUs, so a threshold ties exactly with an IoU only when
        it should (all candidates equal: std 0, t_g equals their common IoU, and they all pass).
    """

    def __init__(self, topk: int = 9, ignore_iof_thr: float = 0.5) -> None:
        if int(topk) != topk or topk < 1:
            raise ValueError(f"topk must be a positive integer, got {topk}")
        self.topk = int(topk)
        self.ignore_iof_thr = float(ignore_iof_thr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(topk={self.topk}, ignore_iof_thr={self.ignore_iof_thr})"

    def assign(self, anchors: Tensor, num_anchors_per_level: list[int], gt_boxes: Tensor,
               ignore_boxes: Tensor | None = None) -> Tensor:
        """Codes ``(A,)`` for one image: ``anchors (A, 4)`` (levels concatenated in order), ``gt_boxes (G, 4)``,
        ``ignore_boxes (C, 4)``, all xyxy."""
        gt_valid = torch.ones((1, gt_boxes.shape[0]), dtype=torch.bool, device=gt_boxes.device)  # (1, G)
        ignore = None if ignore_boxes is None else ignore_boxes.unsqueeze(0)  # (1, C, 4)
        targets = PaddedTargets.from_boxes(gt_boxes.unsqueeze(0), gt_valid, ignore)
        return self.assign_batched(anchors, num_anchors_per_level, targets)[0]

    @torch.no_grad()
    def assign_batched(self, anchors: Tensor, num_anchors_per_level: list[int], targets: PaddedTargets) -> Tensor:
        """Codes ``(B, A)`` for a batch sharing one anchor set.

        Args:
            anchors: (A, 4) xyxy, the levels concatenated in the order of ``num_anchors_per_level``.
            num_anchors_per_level: anchors per FPN level; they must add up to A.
            targets: ``boxes`` (B, G, 4) xyxy padded per image (G may be 0), ``valid`` (B, G) False for padding
                slots (never positive), ``ignore_boxes`` (B, C, 4) crowd regions with their ``ignore_valid``.
        """
        if anchors.dim() != 2 or anchors.shape[-1] != 4:
            raise ValueError(f"anchors must be (A, 4), got {tuple(anchors.shape)}")
        counts = [int(c) for c in num_anchors_per_level]
        if any(c < 0 for c in counts) or sum(counts) != anchors.shape[0]:
            raise ValueError(f"num_anchors_per_level {counts} must be >= 0 and add up to {anchors.shape[0]}")
        check_padded_targets(targets)
        num_images, num_gts = targets.boxes.shape[:2]
        num_anchors = anchors.shape[0]
        codes = torch.full((num_images, num_anchors), BACKGROUND, dtype=torch.long, device=anchors.device)
        if num_images > 0 and num_gts > 0 and num_anchors > 0:
            self._match(anchors, counts, targets.boxes, targets.valid.to(torch.bool), codes)
        if targets.ignore_boxes.shape[1] > 0 and num_anchors > 0:
            ignore_crowd_regions(codes, anchors, targets.ignore_boxes, targets.ignore_valid, self.ignore_iof_thr)
        return codes

    def _candidates(self, anchor_centres: Tensor, counts: list[int], gt_centres: Tensor) -> Tensor:
        """Indices ``(B, G, n)`` into all anchors of each gt's candidates, n = sum_l min(topk, A_l)."""
        gt_cx = gt_centres[..., 0:1]  # (B, G, 1)
        gt_cy = gt_centres[..., 1:2]
        candidates = []
        start = 0
        for count in counts:
            if count > 0:
                level = anchor_centres[start:start + count]  # (A_l, 2)
                dist2 = (level[:, 0] - gt_cx).square_()  # (B, G, A_l)
                dist2.add_((level[:, 1] - gt_cy).square_())
                # Unique sort keys: the bits of a non-negative fp32 order like its value, so
                # bits * A_l + index sorts by distance first and by anchor index among equal distances.
                keys = dist2.view(torch.int32).to(torch.int64)  # (B, G, A_l)
                keys.mul_(count).add_(torch.arange(count, device=keys.device))
                k = min(self.topk, count)
                nearest = keys.topk(k, dim=-1, largest=False, sorted=False).indices  # (B, G, k)
                candidates.append(nearest.add_(start))
            start += count
        return torch.cat(candidates, dim=-1)

    def _match(self, anchors: Tensor, counts: list[int], gt_boxes: Tensor, gt_valid: Tensor,
               codes: Tensor) -> None:
        """Fill ``codes (B, A)`` in place with the ATSS positives."""
        num_images, num_gts = gt_boxes.shape[:2]
        anchors = anchors.float()
        gt_boxes = gt_boxes.float()
        # All in fp32, like the anchors the generators make (the sort keys below need fp32 bits).
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
        candidate_idx = self._candidates(anchor_centres, counts, gt_centres)  # (B, G, n)
        num_candidates = candidate_idx.shape[-1]

        # IoU of each gt with its own candidates, in the operation order of torchvision.ops.box_iou.
        cand_boxes = anchors[candidate_idx]  # (B, G, n, 4)
        gt = gt_boxes.unsqueeze(2)  # (B, G, 1, 4)
        inter_w = (torch.minimum(gt[..., 2], cand_boxes[..., 2]) - torch.maximum(gt[..., 0], cand_boxes[..., 0]))
        inter_h = (torch.minimum(gt[..., 3], cand_boxes[..., 3]) - torch.maximum(gt[..., 1], cand_boxes[..., 1]))
        inter = inter_w.clamp_(min=0) * inter_h.clamp_(min=0)  # (B, G, n)
        union = box_area(gt) + box_area(cand_boxes) - inter  # (B, G, n)
        # union == 0 only for two degenerate boxes (inter 0 too): 0 / tiny = 0 instead of NaN.
        cand_iou = inter / union.clamp_(min=torch.finfo(inter.dtype).tiny)  # (B, G, n)

        iou64 = cand_iou.double()
        threshold = iou64.mean(dim=-1, keepdim=True)  # (B, G, 1)
        if num_candidates > 1:
            threshold = threshold + iou64.std(dim=-1, keepdim=True)  # unbiased (n - 1), as the official code
        cand_centres = anchor_centres[candidate_idx]  # (B, G, n, 2)
        side_dist = torch.cat((cand_centres - gt[..., :2], gt[..., 2:] - cand_centres), dim=-1)  # (B, G, n, 4)
        inside = side_dist.amin(dim=-1) > _INSIDE_MARGIN  # (B, G, n)
        positive = (iou64 >= threshold) & inside & gt_valid.unsqueeze(-1)  # (B, G, n)

        # An anchor positive for several gts goes to the highest IoU (lowest gt index on exact ties).
        # Candidate lists never repeat an anchor for one gt, so scatter-reductions over the flattened
        # (G, n) entries give per-anchor answers without a (B, G, A) matrix.
        flat_idx = candidate_idx.reshape(num_images, -1)  # (B, G * n)
        pos_iou = torch.where(positive, cand_iou, -1.0).reshape(num_images, -1)  # (B, G * n)
        best_iou = torch.full(codes.shape, -1.0, dtype=cand_iou.dtype, device=codes.device)
        best_iou.scatter_reduce_(1, flat_idx, pos_iou, reduce="amax")  # (B, A)
        wins = positive.reshape(num_images, -1) & (pos_iou == best_iou.gather(1, flat_idx))  # (B, G * n)
        gt_index = torch.arange(num_gts, device=codes.device).view(1, -1, 1).expand_as(candidate_idx)
        winner = torch.where(wins, gt_index.reshape(num_images, -1), num_gts)  # (B, G * n); num_gts: none
        chosen = torch.full_like(codes, num_gts).scatter_reduce_(1, flat_idx, winner, reduce="amin")  # (B, A)
        codes.copy_(torch.where(chosen < num_gts, chosen, codes))
