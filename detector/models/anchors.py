"""Anchor generation for the FPN levels P3-P7.

Each level l (stride s_l, base size b_l) has cell anchors for every (ratio r, scale c) pair, ordered
ratio-major then scale (the order torchvision's AnchorGenerator uses, so its weights convert as they are):

    w = b_l * c / sqrt(r),   h = b_l * c * sqrt(r)      (r = height / width)

centred on the grid points (x * s_l + offset * s_l, y * s_l + offset * s_l). Anchors of a level are laid
out location-major: index = (y * W + x) * A + a, matching a head output permuted to (B, H, W, A, K).

Two options reproduce torchvision's RetinaNet exactly:

* ``sizes_per_level``: the anchor sizes of each level given outright instead of b_l * c (torchvision rounds
  them down: (32, 40, 50), (64, 80, 101), ...); then w = size / sqrt(r), h = size * sqrt(r).
* ``strides_from_input``: the grid step of level l is (H_in // H_l, W_in // W_l) for an input of
  (H_in, W_in) and a feature map of (H_l, W_l), torchvision's AnchorGenerator rule, instead of s_l. The two
  agree when the input is a multiple of the level's stride, and differ at P6/P7 otherwise (an 800-row
  input gives P6 13 rows, a step of 800 // 13 = 61 instead of 64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors for a list of feature maps; cached per (feature sizes, device, dtype)."""

    def __init__(self, strides: list[int], sizes: list[float], scales: list[float], ratios: list[float],
                 offset: float = 0.0, round_cell_anchors: bool = True,
                 sizes_per_level: list[list[float]] | None = None, strides_from_input: bool = False):
        super().__init__()
        if len(strides) != len(sizes):
            raise ValueError(f"one anchor size per level is needed: {len(strides)} strides, {len(sizes)} sizes")
        self.strides = list(strides)
        self.offset = offset
        self.strides_from_input = strides_from_input
        if sizes_per_level is not None:
            if len(sizes_per_level) != len(strides) or len({len(level) for level in sizes_per_level}) != 1:
                raise ValueError(f"sizes_per_level needs {len(strides)} lists of equal length, got {sizes_per_level}")
            # sizes given outright: size x scale with scale 1
            self.cell_anchors = [self._cell_anchors(1.0, list(level), ratios, round_cell_anchors)
                                 for level in sizes_per_level]
            self.num_anchors_per_location = len(sizes_per_level[0]) * len(ratios)
        else:
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

    def level_steps(self, feature_sizes: list[tuple[int, int]],
                    image_size: tuple[int, int] | None) -> list[tuple[int, int]]:
        """Grid step (y, x) of each level: its stride, or input size // feature size (``strides_from_input``)."""
        if not self.strides_from_input:
            return [(stride, stride) for stride in self.strides]
        if image_size is None:
            raise ValueError("AnchorGenerator(strides_from_input=True) needs the input image size")
        return [(image_size[0] // height, image_size[1] // width) for height, width in feature_sizes]

    def grid_anchors(self, feature_sizes: list[tuple[int, int]], device: torch.device,
                     dtype: torch.dtype = torch.float32, image_size: tuple[int, int] | None = None) -> list[Tensor]:
        """Anchors per level, each (H_l * W_l * A, 4) xyxy in input pixels."""
        steps = self.level_steps(feature_sizes, image_size)
        if torch.jit.is_tracing():  # an exported graph derives the anchors from its input's shape, no constants
            return self._levels(feature_sizes, steps, device, dtype)
        key = (tuple(feature_sizes), tuple(steps), device, dtype)
        if key not in self._cache:
            self._cache = {key: self._levels(feature_sizes, steps, device, dtype)}  # one entry: sizes change rarely
        return self._cache[key]

    def _levels(self, feature_sizes, steps, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        levels = []
        for (height, width), (step_y, step_x), cell in zip(feature_sizes, steps, self.cell_anchors):
            shift_x = (torch.arange(width, dtype=torch.float32, device=device) + self.offset) * step_x
            shift_y = (torch.arange(height, dtype=torch.float32, device=device) + self.offset) * step_y
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (HW, 1, 4)
            levels.append((shifts + cell.to(device)[None]).reshape(-1, 4).to(dtype))  # (HWA, 4)
        return levels

    def forward(self, features: list[Tensor],
                image_size: tuple[int, int] | None = None) -> tuple[Tensor, list[int]]:
        """All levels' anchors concatenated (A_total, 4) and the number of anchors per level.

        ``image_size`` (H_in, W_in), the padded network input, is needed with ``strides_from_input``."""
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        levels = self.grid_anchors(sizes, features[0].device, image_size=image_size)
        return torch.cat(levels), [a.shape[0] for a in levels]


def level_strides(min_level: int = 3, max_level: int = 7) -> list[int]:
    """Strides 2^l of the FPN levels P{min_level}..P{max_level}."""
    return [int(math.pow(2, level)) for level in range(min_level, max_level + 1)]
