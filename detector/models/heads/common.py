"""Pieces every dense head shares: conv towers, level flattening, padded ground truths, normalisers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


def conv_tower(in_channels: int, feat_channels: int, num_convs: int, norm: str | None) -> nn.Sequential:
    """num_convs x (conv3x3 [+ GroupNorm(32)] + ReLU), weights N(0, 0.01), biases 0."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        conv = nn.Conv2d(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1,
                         bias=norm is None)
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers.append(conv)
        if norm == "gn":
            layers.append(nn.GroupNorm(32, feat_channels))
        elif norm is not None:
            raise ValueError(f"unknown head norm {norm!r}; choose null or gn")
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def prediction_conv(in_channels: int, out_channels: int, bias_value: float = 0.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias_value)
    return conv


def flatten_level(output: Tensor, channels: int) -> Tensor:
    """(B, A * C, H, W) -> (B, H * W * A, C), the anchor generator's location-major order."""
    batch, _, height, width = output.shape
    return output.view(batch, -1, channels, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, channels)


@dataclass
class PaddedTargets:
    """Ground truths of a batch padded to the largest count, so assignment and losses run batched."""
    boxes: Tensor         # (B, G, 4) xyxy
    labels: Tensor        # (B, G) int64
    valid: Tensor         # (B, G) bool
    ignore_boxes: Tensor  # (B, C, 4) crowd regions
    ignore_valid: Tensor  # (B, C) bool


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


def assign_targets(assigner, anchors: Tensor, num_anchors_per_level: list[int],
                   targets: list[dict]) -> tuple[PaddedTargets, Tensor]:
    """Pad the batch's ground truths and assign every anchor: (B, N) gt index, -1 background, -2 ignored."""
    gt = pad_targets(targets, anchors.device)
    if getattr(assigner, "uses_levels", False):  # ATSS picks its candidates level by level
        assigned = assigner.assign_batched(anchors, num_anchors_per_level, gt.boxes, gt.valid, gt.ignore_boxes,
                                           gt.ignore_valid)
    else:
        assigned = assigner.assign_batched(anchors, gt.boxes, gt.valid, gt.ignore_boxes, gt.ignore_valid)
    return gt, assigned


def mean_over_processes(value: Tensor) -> Tensor:
    """Average a scalar over all processes (the positives normaliser), so every rank divides alike."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


class Scale(nn.Module):
    """A learnable scalar per FPN level multiplying the box branch output (FCOS / ATSS / GFL)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def anchor_centres(anchors: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 2) centres."""
    return (anchors[..., :2] + anchors[..., 2:]) * 0.5


def centerness_target(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS/ATSS centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of points in their boxes."""
    left_right = torch.stack([points[:, 0] - gt_boxes[:, 0], gt_boxes[:, 2] - points[:, 0]], dim=1).clamp(min=0)
    top_bottom = torch.stack([points[:, 1] - gt_boxes[:, 1], gt_boxes[:, 3] - points[:, 1]], dim=1).clamp(min=0)
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values.clamp(min=1e-6)) * \
        (top_bottom.min(dim=1).values / top_bottom.max(dim=1).values.clamp(min=1e-6))
    return ratio.sqrt()
