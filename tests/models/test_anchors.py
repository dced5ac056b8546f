"""Anchor generator: counts, cell shapes, positions and ordering."""

import math

import pytest
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


TORCHVISION_SIZES = [[32, 40, 50], [64, 80, 101], [128, 161, 203], [256, 322, 406], [512, 645, 812]]


def torchvision_retinanet_anchors(image_size, feature_sizes):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    generator = TorchvisionAnchorGenerator(tuple(map(tuple, TORCHVISION_SIZES)), ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    return generator, generator(images, [torch.zeros(1, 1, h, w) for h, w in feature_sizes])[0]


def test_sizes_per_level_and_strides_from_input_reproduce_torchvision():
    # 96 x 160 input: P6 is 2 x 3 and P7 1 x 2, so torchvision's grid steps there are 48 x 53 and 96 x 80
    image_size, feature_sizes = (96, 160), [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]
    tv_generator, expected = torchvision_retinanet_anchors(image_size, feature_sizes)
    ours = AnchorGenerator(level_strides(), [32, 64, 128, 256, 512], [1.0], [0.5, 1.0, 2.0],
                           sizes_per_level=TORCHVISION_SIZES, strides_from_input=True)
    assert ours.num_anchors_per_location == 9
    for mine, theirs in zip(ours.cell_anchors, tv_generator.cell_anchors):
        assert torch.equal(mine, theirs)
    feats = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    anchors, counts = ours(feats, image_size)
    assert counts == [h * w * 9 for h, w in feature_sizes]
    assert torch.equal(anchors, expected)
    p6 = anchors[sum(counts[:3]):sum(counts[:4])]
    assert ((p6[36, :2] + p6[36, 2:]) / 2).tolist() == [53.0, 48.0]  # P6 location (y=1, x=1): x 1 * 53, y 1 * 48

    fixed = AnchorGenerator(level_strides(), [32, 64, 128, 256, 512], [1.0], [0.5, 1.0, 2.0],
                            sizes_per_level=TORCHVISION_SIZES)
    fixed_anchors, _ = fixed(feats)  # steps 2^l: P3-P5 agree with torchvision here, P6 / P7 do not
    assert torch.equal(fixed_anchors[:sum(counts[:3])], expected[:sum(counts[:3])])
    assert not torch.equal(fixed_anchors, expected)


def test_strides_from_input_needs_the_image_size():
    gen = AnchorGenerator([8], [32], [1.0], [1.0], strides_from_input=True)
    with pytest.raises(ValueError, match="image size"):
        gen([torch.zeros(1, 1, 2, 2)])
    anchors, _ = gen([torch.zeros(1, 1, 2, 2)], (20, 16))  # steps 20 // 2 = 10 and 16 // 2 = 8
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres.tolist() == [[0.0, 0.0], [8.0, 0.0], [0.0, 10.0], [8.0, 10.0]]


def test_sizes_per_level_must_match_levels():
    with pytest.raises(ValueError, match="sizes_per_level"):
        AnchorGenerator([8, 16], [32, 64], [1.0], [1.0], sizes_per_level=[[32, 40]])
