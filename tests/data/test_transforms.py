"""build_transforms: resize rule, box scaling, flip, normalisation, determinism."""

from __future__ import annotations

import pytest
import torch

from detector.data import build_transforms

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_sample(height, width, boxes=((2.0, 3.0, 10.0, 12.0),), ignore=((0.0, 0.0, 4.0, 4.0),), seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(len(boxes), dtype=torch.int64),
        "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
        "image_id": 42,
        "orig_size": (height, width),
        "img_size": (height, width),
    }
    return image, target


@pytest.mark.parametrize(
    "height, width, min_size, max_size, expected",
    [
        (40, 60, 80, 200, (80, 120)),  # shorter side 40 -> 80, longer 120 <= 200
        (60, 40, 80, 200, (120, 80)),  # portrait
        (20, 100, 50, 150, (30, 150)),  # shorter -> 50 would give 250 > 150: longer side capped at 150
        (30, 45, 50, 1000, (50, 75)),  # scale 5/3
        (33, 50, 16, 1000, (16, 24)),  # downscale: 50 * 16 / 33 = 24.24 -> 24
        (50, 50, 64, 64, (64, 64)),
    ],
)
def test_eval_resize_follows_shorter_side_and_max_size(height, width, min_size, max_size, expected):
    image, target = make_sample(height, width)
    out_image, out_target = build_transforms(train=False, min_size=min_size, max_size=max_size)(image, target)
    assert tuple(out_image.shape) == (3, *expected)
    assert out_target["img_size"] == expected
    assert out_target["orig_size"] == (height, width)
    scale_x, scale_y = expected[1] / width, expected[0] / height
    scale = torch.tensor([scale_x, scale_y, scale_x, scale_y])
    assert torch.allclose(out_target["boxes"], target["boxes"] * scale, atol=1e-4)
    assert torch.allclose(out_target["ignore_boxes"], target["ignore_boxes"] * scale, atol=1e-4)


def test_eval_uses_last_min_size_and_never_flips():
    image, target = make_sample(40, 60)
    transform = build_transforms(train=False, min_size=[20, 30, 50], max_size=1000, flip_prob=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_target = transform(image, target)
        assert out_target["img_size"] == (50, 75)
        assert torch.allclose(out_target["boxes"], target["boxes"] * 1.25)


def test_train_multiscale_draws_every_size_and_is_seeded():
    image, target = make_sample(40, 60)
    transform = build_transforms(train=True, min_size=[20, 30, 50], max_size=1000, flip_prob=0.5)

    def run():
        torch.manual_seed(123)
        return [transform(image, target)[1] for _ in range(30)]

    first, second = run(), run()
    assert {t["img_size"][0] for t in first} == {20, 30, 50}
    assert [t["img_size"] for t in first] == [t["img_size"] for t in second]
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(first, second))
    flipped = {bool(t["boxes"][0, 0] > t["img_size"][1] / 2) for t in first}  # box starts near the left edge
    assert flipped == {True, False}


def test_train_range_sampling_draws_every_integer_between_min_and_max():
    """mmdetection's multiscale_mode 'range': the shorter side uniform over the integers min..max (both ends
    included), not only the listed sizes; evaluation still uses the last size."""
    image, target = make_sample(20, 30)
    transform = build_transforms(train=True, min_size=[20, 24], max_size=1000, flip_prob=0.0,
                                 min_size_sampling="range")
    torch.manual_seed(0)
    drawn = [transform(image, target)[1]["img_size"] for _ in range(200)]
    assert {h for h, _ in drawn} == {20, 21, 22, 23, 24}
    assert all(w == round(h * 1.5) for h, w in drawn)  # aspect kept
    evaluation = build_transforms(train=False, min_size=[20, 24], max_size=1000, min_size_sampling="range")
    assert evaluation(image, target)[1]["img_size"] == (24, 36)
    with pytest.raises(ValueError, match="sampling"):
        build_transforms(train=True, min_size=[20, 24], max_size=1000, min_size_sampling="uniform")


def test_gfl_multiscale_configs_draw_480_to_800():
    from detector.config import load_config
    for name in ("gfl_r50_fpn_ms_2x_coco.yaml", "gfl_r101_fpn_ms_2x_coco.yaml"):  # implus/GFocal, mmdetection v2
        data = load_config(f"configs/gfl/{name}").data
        assert (min(data.min_size), max(data.min_size), data.min_size_sampling, data.max_size) == (480, 800, "range",
                                                                                                   1333)


def test_flip_mirrors_boxes_and_pixels():
    height, width = 16, 24
    image, target = make_sample(height, width, boxes=((2.0, 3.0, 10.0, 12.0), (20.0, 0.0, 24.0, 16.0)))
    transform = build_transforms(train=True, min_size=16, max_size=1000, flip_prob=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    out_image, out_target = transform(image, target)
    assert out_target["img_size"] == (16, 24)  # scale 1
    x1, y1, x2, y2 = target["boxes"].unbind(1)
    expected = torch.stack([width - x2, y1, width - x1, y2], dim=1)  # x1' = W - x2, x2' = W - x1
    assert torch.allclose(out_target["boxes"], expected)
    assert out_target["ignore_boxes"].tolist() == [[20.0, 0.0, 24.0, 4.0]]
    assert torch.allclose(out_image, image.flip(-1).float() / 255.0, atol=1e-6)
    assert out_target["labels"].tolist() == [0, 1]


def test_no_flip_when_probability_is_zero():
    image, target = make_sample(16, 24)
    transform = build_transforms(train=True, min_size=16, max_size=1000, flip_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    for _ in range(5):
        out_image, out_target = transform(image, target)
        assert torch.equal(out_target["boxes"], target["boxes"])
        assert torch.allclose(out_image, image.float() / 255.0, atol=1e-6)


def test_normalisation_values():
    image = torch.empty((3, 8, 8), dtype=torch.uint8)
    image[0], image[1], image[2] = 0, 128, 255
    _, target = make_sample(8, 8)
    out_image, _ = build_transforms(train=False, min_size=8, max_size=8)(image, target)
    assert out_image.dtype == torch.float32
    for channel, value in enumerate((0, 128, 255)):
        expected = (value / 255.0 - MEAN[channel]) / STD[channel]
        assert torch.allclose(out_image[channel], torch.full((8, 8), expected), atol=1e-5)


def test_empty_boxes_and_other_fields_pass_through():
    image, target = make_sample(20, 30, boxes=(), ignore=())
    out_image, out_target = build_transforms(train=True, min_size=[10, 40], max_size=100)(image, target)
    assert out_target["boxes"].shape == (0, 4) and out_target["ignore_boxes"].shape == (0, 4)
    assert out_target["labels"].shape == (0,)
    assert out_target["image_id"] == 42
    assert type(out_target["boxes"]) is torch.Tensor and type(out_image) is torch.Tensor


def test_input_target_is_not_modified():
    image, target = make_sample(20, 30)
    boxes_before = target["boxes"].clone()
    build_transforms(train=False, min_size=40, max_size=100)(image, target)
    assert torch.equal(target["boxes"], boxes_before) and target["img_size"] == (20, 30)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        build_transforms(train=True, min_size=[], max_size=100)
    with pytest.raises(ValueError):
        build_transforms(train=True, min_size=10, max_size=100, flip_prob=1.5)
