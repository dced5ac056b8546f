"""Layers and geometry every dense head shares: conv towers, prediction convs, level flattening, scales, centres."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TowerSpec:
    """A head's two conv towers (classification and box), alike: ``num_convs`` x (conv3x3 [+ GroupNorm] + ReLU)
    from ``in_channels`` (the neck's) to ``feat_channels``; ``norm`` None or "gn"."""
    in_channels: int
    feat_channels: int = 256
    num_convs: int = 4
    norm: str | None = None

    @property
    def out_channels(self) -> int:
        """Channels the prediction convs receive (the input itself when there are no tower convs)."""
        return self.feat_channels if self.num_convs > 0 else self.in_channels

    def build(self) -> nn.Sequential:
        return conv_tower(self.in_channels, self.feat_channels, self.num_convs, self.norm)


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
