"""What every assigner shares: the codes, the padded ground truths it consumes, one batched signature, the crowd rule.

Codes per anchor follow torchvision's Matcher: a gt index >= 0 (positive), ``BACKGROUND`` (-1) or ``IGNORE`` (-2).

Batched signature (every assigner):

    assigner.assign_batched(anchors (A, 4), num_anchors_per_level, targets: PaddedTargets) -> codes (B, A)

``num_anchors_per_level`` is read by the assigners that pick candidates level by level (ATSS) and ignored by
the others (MaxIoU). Each image's ground truths are padded to the batch's largest count (``valid`` marks the
real ones), so assignment runs over the whole batch without a Python loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from detector.boxes import box_iof_batched

__all__ = ["BACKGROUND", "IGNORE", "Assigner", "PaddedTargets", "pad_targets", "assign_targets",
           "check_padded_targets", "ignore_crowd_regions"]

BACKGROUND = -1
IGNORE = -2


@dataclass
class PaddedTargets:
    """Ground truths of a batch padded to the largest count, so assignment and losses run batched."""
    boxes: Tensor         # (B, G, 4) xyxy
    labels: Tensor        # (B, G) int64
    valid: Tensor         # (B, G) bool, False for padding slots
    ignore_boxes: Tensor  # (B, C, 4) crowd / ignore regions
    ignore_valid: Tensor  # (B, C) bool

    @classmethod
    def from_boxes(cls, boxes: Tensor, valid: Tensor, ignore_boxes: Tensor | None = None,
                   ignore_valid: Tensor | None = None) -> PaddedTargets:
        """Targets for assignment alone (labels all 0): ``boxes (B, G, 4)``, ``valid (B, G)``, optional ignore
        regions ``(B, C, 4)`` with their mask (None: all valid). Shapes are checked by the assigner."""
        batch = boxes.shape[0] if boxes.dim() else 0
        if ignore_boxes is None:
            ignore_boxes = boxes.new_zeros((batch, 0, 4))
        if ignore_valid is None:
            ignore_valid = torch.ones(ignore_boxes.shape[:2], dtype=torch.bool, device=ignore_boxes.device)
        labels = torch.zeros(boxes.shape[:2], dtype=torch.int64, device=boxes.device)
        return cls(boxes, labels, valid, ignore_boxes, ignore_valid)


class Assigner(Protocol):
    """The one batched signature every assigner implements (see the module docstring)."""

    def assign_batched(self, anchors: Tensor, num_anchors_per_level: list[int], targets: PaddedTargets) -> Tensor:
        ...


def _pad(tensors: list[Tensor], width: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    counts = torch.tensor([len(t) for t in tensors])
    max_count = int(counts.max()) if len(tensors) else 0
    shape = (len(tensors), max_count) + ((width,) if width else ())
    padded = torch.zeros(shape, dtype=dtype)
    valid = torch.arange(max_count)[None, :] < counts[:, None]  # (B, G)
    if max_count:
        padded[valid] = torch.cat([t.to("cpu", dtype).reshape(-1, *shape[2:]) for t in tensors])
    return padded.to(device, non_blocking=True), valid.to(device, non_blocking=True)


def pad_targets(targets: list[dict], device: torch.device) -> PaddedTargets:
    """Stack per-image ``boxes``/``labels``/``ignore_boxes`` into padded batch tensors (one copy each)."""
    boxes, valid = _pad([t["boxes"] for t in targets], 4, device, torch.float32)
    labels, _ = _pad([t["labels"] for t in targets], 0, device, torch.int64)
    empty = torch.zeros(0, 4)
    ignore, ignore_valid = _pad([t.get("ignore_boxes", empty) for t in targets], 4, device, torch.float32)
    return PaddedTargets(boxes, labels, valid, ignore, ignore_valid)


def assign_targets(assigner: Assigner, anchors: Tensor, num_anchors_per_level: list[int],
                   targets: list[dict]) -> tuple[PaddedTargets, Tensor]:
    """Pad the batch's ground truths and assign every anchor: (B, N) gt index, -1 background, -2 ignored."""
    padded = pad_targets(targets, anchors.device)
    return padded, assigner.assign_batched(anchors, num_anchors_per_level, padded)


def check_padded_targets(targets: PaddedTargets) -> None:
    """Raise ValueError naming the shape when ``targets`` are not (B, G, 4) boxes with a (B, G) mask."""
    if targets.boxes.dim() != 3 or targets.boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be (B, G, 4), got {tuple(targets.boxes.shape)}")
    if targets.valid.shape != targets.boxes.shape[:2]:
        raise ValueError(f"gt_valid {tuple(targets.valid.shape)} must be {tuple(targets.boxes.shape[:2])}")


def ignore_crowd_regions(codes: Tensor, anchors: Tensor, ignore_boxes: Tensor, ignore_valid: Tensor | None,
                         iof_thr: float) -> None:
    """Turn background anchors whose area lies more than ``iof_thr`` inside an ignore (crowd) region into
    IGNORE, in place; positives stay. Shared by every assigner:

        IoF(a, c) = area(a ∩ c) / area(a),   IGNORE where code(a) = BACKGROUND and max_c IoF(a, c) > iof_thr
    """
    if ignore_boxes.dim() != 3 or ignore_boxes.shape[0] != codes.shape[0] or ignore_boxes.shape[-1] != 4:
        raise ValueError(f"ignore_boxes must be ({codes.shape[0]}, C, 4), got {tuple(ignore_boxes.shape)}")
    iof = box_iof_batched(ignore_boxes, anchors)  # (B, C, A)
    if ignore_valid is not None:
        iof.masked_fill_(~ignore_valid.to(torch.bool).unsqueeze(-1), 0.0)
    in_crowd = iof.amax(dim=1) > iof_thr  # (B, A)
    codes.masked_fill_(in_crowd & (codes == BACKGROUND), IGNORE)
