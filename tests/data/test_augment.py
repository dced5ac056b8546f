"""data.augment (detector.data.augment): crops against hand-computed boxes, labels and crowd regions kept
consistent, large-scale jitter's output size and scale, photometric distortion on the image only, the switches
off by default, config validation, and per-sample seeding of the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou

from detector.config import load_config
from detector.data.augment import DropSmallBoxes, IoUCrop, RandomAreaCrop, crop_sample, large_scale_jitter
from detector.data.build import build_transforms_for
from detector.data.seeded import seeded_rng

ROOT = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 100, 200


def boxes(values) -> tv_tensors.BoundingBoxes:
    return tv_tensors.BoundingBoxes(torch.tensor(values, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                    canvas_size=(HEIGHT, WIDTH))


def coordinate_image() -> tv_tensors.Image:
    """Channel 0 holds each pixel's x, channel 1 its y: a crop's window can be read off its top-left pixel."""
    ys, xs = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    return tv_tensors.Image(torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8))  # (3, 100, 200)


def sample():
    targets = {"boxes": boxes([[10, 10, 50, 50], [150, 60, 190, 90], [90, 20, 130, 80]]),
               "ignore_boxes": boxes([[0, 0, 120, 30]]), "labels": torch.tensor([1, 2, 3])}
    return coordinate_image(), targets


def window(image) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a crop of coordinate_image()."""
    return int(image[0, 0, 0]), int(image[1, 0, 0]), image.shape[-1], image.shape[-2]


def by_hand(box, left, top, width, height) -> list[float]:
    """A box moved into a crop window and clamped to it."""
    x1, y1, x2, y2 = box
    return [min(max(x1 - left, 0), width), min(max(y1 - top, 0), height),
            min(max(x2 - left, 0), width), min(max(y2 - top, 0), height)]


def test_crop_clamps_boxes_and_drop_small_boxes_removes_slivers_with_their_labels():
    image, targets = sample()
    image, targets = crop_sample(image, targets, top=20, left=40, height=50, width=100)
    assert window(image) == (40, 20, 100, 50)
    assert targets["boxes"].tolist() == [[0, 0, 10, 30], [100, 40, 100, 50], [50, 0, 90, 50]]
    assert targets["ignore_boxes"].tolist() == [[0, 0, 80, 10]]
    image, targets = DropSmallBoxes(min_size=12)(image, targets)
    assert targets["boxes"].tolist() == [[50, 0, 90, 50]]  # 10 px wide and 0 px wide boxes dropped
    assert targets["labels"].tolist() == [3]
    assert targets["ignore_boxes"].tolist() == []  # 10 px tall


@pytest.mark.parametrize("seed", range(8))
def test_iou_crop_keeps_the_boxes_whose_centre_is_inside(seed):
    crop = IoUCrop(prob=1.0, min_scale=0.5, max_scale=0.8, min_aspect_ratio=0.5, max_aspect_ratio=4.0,
                   min_ious=[0.0], trials=40)
    image, targets = sample()
    with seeded_rng(seed):
        out_image, out = crop(image, targets)
    left, top, width, height = window(out_image)
    assert (width, height) != (WIDTH, HEIGHT)
    expected, labels = [], []
    for box, label in zip(targets["boxes"].tolist(), targets["labels"].tolist()):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if left < cx < left + width and top < cy < top + height:
            expected.append(by_hand(box, left, top, width, height))
            labels.append(label)
    assert len(expected) >= 1
    assert out["boxes"].tolist() == expected and out["labels"].tolist() == labels
    # the crowd region is cut to the crop whatever its centre (still an ignore region where it overlaps)
    assert out["ignore_boxes"].tolist() == [by_hand([0, 0, 120, 30], left, top, width, height)]


def test_iou_crop_reaches_its_iou_threshold_and_leaves_empty_images_alone():
    crop = IoUCrop(prob=1.0, min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0,
                   min_ious=[0.5], trials=40)
    image, targets = sample()
    for seed in range(5):
        with seeded_rng(seed):
            out_image, _ = crop(image, targets)
        left, top, width, height = window(out_image)
        ious = box_iou(targets["boxes"], torch.tensor([[left, top, left + width, top + height]], dtype=torch.float32))
        assert float(ious.max()) >= 0.5
    empty = {**targets, "boxes": boxes([]), "labels": torch.zeros(0, dtype=torch.int64)}
    out_image, out = crop(image, empty)
    assert out_image is image and out is empty
    whole = IoUCrop(1.0, 0.3, 1.0, 0.5, 2.0, [1.0], 40)  # the "keep it whole" threshold
    assert whole(image, targets)[0] is image


def test_area_crop_matches_the_hand_computed_boxes():
    crop = RandomAreaCrop(prob=1.0, scale=[0.2, 0.5], ratio=[0.5, 2.0])
    image, targets = sample()
    for seed in range(5):
        with seeded_rng(seed):
            out_image, out = crop(image, targets)
        left, top, width, height = window(out_image)
        assert 0.2 * HEIGHT * WIDTH * 0.9 <= width * height <= 0.5 * HEIGHT * WIDTH * 1.1  # area, up to rounding
        assert out["boxes"].tolist() == [by_hand(b, left, top, width, height) for b in targets["boxes"].tolist()]
        assert out["labels"].tolist() == [1, 2, 3]  # dropping waits for DropSmallBoxes, after the resize


def test_probability_zero_and_one():
    image, targets = sample()
    assert RandomAreaCrop(0.0, [0.2, 0.5], [0.5, 2.0])(image, targets)[0] is image
    with seeded_rng(0):
        applied = sum(RandomAreaCrop(0.5, [0.2, 0.5], [0.5, 2.0])(image, targets)[0] is not image
                      for _ in range(200))
    assert 70 < applied < 130


def test_large_scale_jitter_output_size_scale_and_padding():
    """A 100 x 200 image to [48, 80] at scale 1: r = min(48 / 100, 80 / 200) = 0.4, so 40 x 80 then padded to
    48 x 80 with the mean colour; every box scaled by 0.4 and shifted by the same vertical offset."""
    mean = (0.5, 0.25, 0.75)
    jitter = large_scale_jitter([48, 80], [1.0, 1.0], mean)
    image = tv_tensors.Image(torch.full((3, HEIGHT, WIDTH), 7, dtype=torch.uint8))
    _, targets = sample()
    with seeded_rng(0):
        out_image, out = jitter(image, targets)
    assert out_image.shape == (3, 48, 80)
    pad_rows = (out_image[0] != 7).all(dim=1)  # (48,)
    assert int(pad_rows.sum()) == 8
    assert out_image[:, pad_rows].reshape(3, -1).unique(dim=1).tolist() == [[128], [64], [191]]
    offset = int(pad_rows.int().argmin())  # first image row
    expected = [[0.4 * x1, 0.4 * y1 + offset, 0.4 * x2, 0.4 * y2 + offset]
                for x1, y1, x2, y2 in targets["boxes"].tolist()]
    torch.testing.assert_close(out["boxes"], torch.tensor(expected), check_dtype=False)
    # large scales crop: the output is still exactly the size asked for
    with seeded_rng(1):
        big, big_targets = large_scale_jitter([48, 80], [2.0, 2.0], mean)(image, targets)
    assert big.shape == (3, 48, 80)
    assert (big_targets["boxes"][:, 2] <= 80).all() and (big_targets["boxes"][:, 3] <= 48).all()


def config(*opts: str):
    return load_config(ROOT / "configs" / "quickstart.yaml", list(opts))


def test_pipeline_from_config_and_its_seeding():
    cfg = config("data.min_size=[64]", "data.max_size=128", "data.augment.photometric.prob=1",
                 "data.augment.iou_crop.prob=0.5", "data.augment.random_resized_crop.prob=0.5",
                 "data.augment.scale_jitter.prob=0.5", "data.augment.scale_jitter.size=[64,96]",
                 "data.augment.min_box_size=4")
    transform = build_transforms_for(cfg, "train")
    text = repr(transform)
    for name in ("ColorJitter", "IoUCrop", "RandomAreaCrop", "ScaleJitter", "DropSmallBoxes(min_size=4.0)"):
        assert name in text, name
    assert "IoUCrop" not in repr(build_transforms_for(cfg, "val"))
    image, targets = sample()
    target = {key: value.as_subclass(torch.Tensor) for key, value in targets.items()}
    outputs = []
    for seed in (0, 0, 1, 2, 3):
        with seeded_rng(seed):
            outputs.append(transform(image.as_subclass(torch.Tensor), target))
    for out_image, out in outputs:
        assert out["boxes"].shape[0] == out["labels"].shape[0]
        sides = out["boxes"][:, 2:] - out["boxes"][:, :2]
        assert (sides >= 4).all()
        assert out["img_size"] == tuple(out_image.shape[-2:])
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1]["boxes"], outputs[1][1]["boxes"])
    assert len({tuple(o[0].shape) for o in outputs[1:]}) > 1 or not torch.equal(outputs[1][0], outputs[2][0])


def test_photometric_changes_the_image_only():
    cfg = config("data.min_size=[100]", "data.max_size=200", "data.flip_prob=0", "data.augment.photometric.prob=1")
    image, targets = sample()
    target = {key: value.as_subclass(torch.Tensor) for key, value in targets.items()}
    plain = build_transforms_for(config("data.min_size=[100]", "data.max_size=200", "data.flip_prob=0"), "train")
    with seeded_rng(0):
        out_image, out = build_transforms_for(cfg, "train")(image.as_subclass(torch.Tensor), target)
    reference_image, reference = plain(image.as_subclass(torch.Tensor), target)
    assert not torch.allclose(out_image, reference_image)
    assert torch.equal(out["boxes"], reference["boxes"]) and torch.equal(out["labels"], reference["labels"])
    assert "DropSmallBoxes" not in repr(build_transforms_for(cfg, "train"))  # no crop, nothing to drop


@pytest.mark.parametrize("opt, message", [
    ("data.augment.iou_crop.min_ious=[0.5,0.7]", "must include 0.0"),
    ("data.augment.photometric.prob=1.5", r"photometric.prob must be in \[0, 1\]"),
    ("data.augment.random_resized_crop.scale=[0.6,0.2]", "random_resized_crop.scale must be"),
    ("data.augment.scale_jitter.size=[64]", "scale_jitter.size must be"),
    ("data.augment.min_box_size=0.5", "min_box_size must be >= 1"),
])
def test_bad_settings_name_the_key(opt, message):
    with pytest.raises(ValueError, match=message):
        config(opt)
