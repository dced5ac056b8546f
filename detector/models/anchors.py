"""Anchor generation for the FPN levels P3-P7.

Each level l (stride s_l, base size b_l) has cell anchors for every (ratio r, scale c) pair, ordered
ratio-major then scale (the order torchvision's AnchorGenerator uses, so its weights convert as they are):

    w = b_l * c / sqrt(r),   h = b_l * c * sqrt(r)      (r = height / width)

centred on the grid points (x * s_l + offset * s_l, y * s_l + offset * s_l). Anchors of a level are laid
out location-major: index = (y * W + x) * A + a, matching a head output permuted to (B, H, W, A, K).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors for a list of feature maps; cached per (feature sizes, device, dtype)."""

    def __init__(self, strides: list[int], sizes: list[float], scales: list[float], ratios: list[float],
                 offset: float = 0.0, round_cell_anchors: bool = True):
        super().__init__()
        if len(strides) != len(sizes):
            raise ValueError(f"one anchor size per level is needed: {len(strides)} strides, {len(sizes)} sizes")
        self.strides = list(strides)
        self.offset = offset
        self.cell_anchors = [self._cell_anchors(size, scales, ratios, round_cell_anchors) for size in sizes]
        self.num_anchors_per_location = len(scales) * len(ratios)
        self._cache: dict = {}

    @staticmethod
    def _cell_anchors(size: float, scales: list[float], ratios: list[float], round_: bool) -> Tensor:
        ratios_t = torch.tensor(ratios, dtype=torch.float64)
        scales_t = torch.tensor(scales, dtype=torch.float64) * size
        h_ratios = ratios_t.sqrt()
        w_ratios = 1.0 / h_ratios
        widths = (w_ratios[:, None] * scales_t[None, :]).reshape(-1)  # (A,) ratio-major
        heights = (h_ratios[:, None] * scales_t[None, :]).reshape(-1)
        anchors = torch.stack([-widths, -heights, widths, heights], dim=1) / 2
        return (anchors.round() if round_ else anchors).float()  # (A, 4)

    def grid_anchors(self, feature_sizes: list[tuple[int, int]], device: torch.device,
                     dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """Anchors per level, each (H_l * W_l * A, 4) xyxy in input pixels."""
        key = (tuple(feature_sizes), device, dtype)
        if key not in self._cache:
            levels = []
            for (height, width), stride, cell in zip(feature_sizes, self.strides, self.cell_anchors):
                shift_x = (torch.arange(width, dtype=torch.float32, device=device) + self.offset) * stride
                shift_y = (torch.arange(height, dtype=torch.float32, device=device) + self.offset) * stride
                yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
                shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (HW, 1, 4)
                levels.append((shifts + cell.to(device)[None]).reshape(-1, 4).to(dtype))  # (HWA, 4)
            self._cache = {key: levels}  # one entry: input sizes change rarely within a run
        return self._cache[key]

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[int]]:
        """All levels' anchors concatenated (A_total, 4) and the number of anchors per level."""
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        levels = self.grid_anchors(sizes, features[0].device)
        return torch.cat(levels), [len(a) for a in levels]


def level_strides(min_level: int = 3, max_level: int = 7) -> list[int]:
    """Strides 2^l of the FPN levels P{min_level}..P{max_level}."""
    return [int(math.pow(2, level)) for level in range(min_level, max_level + 1)]
