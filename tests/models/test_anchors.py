"""Anchor generator: counts, cell shapes, positions and ordering."""

import math

import torch

from detector.models.anchors import AnchorGenerator, level_strides

SCALES = [1.0, 2 ** (1 / 3), 2 ** (2 / 3)]


def test_strides():
    assert level_strides(3, 7) == [8, 16, 32, 64, 128]


def test_counts_per_level():
    gen = AnchorGenerator(level_strides(), [32, 64, 128, 256, 512], SCALES, [0.5, 1.0, 2.0])
    feats = [torch.zeros(1, 1, 64 // 2 ** i, 48 // 2 ** i) for i in range(3)] + \
        [torch.zeros(1, 1, 4, 3), torch.zeros(1, 1, 2, 2)]
    anchors, counts = gen(feats)
    expected = [f.shape[-2] * f.shape[-1] * 9 for f in feats]
    assert counts == expected
    assert anchors.shape == (sum(expected), 4)


def test_cell_anchor_shapes_and_order():
    gen = AnchorGenerator([8], [32], SCALES, [0.5, 1.0, 2.0], round_cell_anchors=False)
    anchors, _ = gen([torch.zeros(1, 1, 1, 1)])
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    # ratio-major, scale-minor; ratio = h / w; area = (32 * scale)^2
    for i, (ratio, scale) in enumerate([(r, s) for r in (0.5, 1.0, 2.0) for s in SCALES]):
        assert math.isclose(heights[i] / widths[i], ratio, rel_tol=1e-5)
        assert math.isclose(widths[i] * heights[i], (32 * scale) ** 2, rel_tol=1e-5)
    assert torch.allclose((anchors[:, :2] + anchors[:, 2:]) / 2, torch.zeros(9, 2))  # centred at (0, 0)


def test_positions_are_location_major():
    gen = AnchorGenerator([16], [32], [1.0], [0.5, 2.0])
    anchors, _ = gen([torch.zeros(1, 1, 2, 3)])  # H=2, W=3, A=2
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for y in range(2):
        for x in range(3):
            for a in range(2):
                index = (y * 3 + x) * 2 + a
                assert centres[index].tolist() == [x * 16.0, y * 16.0]


def test_offset_centres_anchors_in_cells():
    gen = AnchorGenerator([8, 16], [64, 128], [1.0], [1.0], offset=0.5)
    anchors, counts = gen([torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)])
    assert counts == [4, 1]
    assert anchors[0].tolist() == [4 - 32, 4 - 32, 4 + 32, 4 + 32]
    assert anchors[4].tolist() == [8 - 64, 8 - 64, 8 + 64, 8 + 64]


def test_cache_reused():
    gen = AnchorGenerator(level_strides(), [32, 64, 128, 256, 512], SCALES, [0.5, 1.0, 2.0])
    feats = [torch.zeros(1, 1, 8 // 2 ** min(i, 3), 8 // 2 ** min(i, 3)) for i in range(5)]
    first = gen.grid_anchors([(f.shape[-2], f.shape[-1]) for f in feats], torch.device("cpu"))
    second = gen.grid_anchors([(f.shape[-2], f.shape[-1]) for f in feats], torch.device("cpu"))
    assert first is second
