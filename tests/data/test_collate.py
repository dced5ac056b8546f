"""DetectionCollator: padding to multiples of the size divisor."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from detector.data import DetectionCollator


def sample(height, width, fill):
    image = torch.full((3, height, width), float(fill))
    return image, {"boxes": torch.zeros(0, 4), "img_size": (height, width)}


@pytest.mark.parametrize(
    "sizes, divisor, expected",
    [
        ([(50, 70), (64, 33)], 32, (64, 96)),
        ([(1, 1)], 32, (32, 32)),
        ([(32, 64), (10, 10)], 32, (32, 64)),
        ([(50, 70), (64, 33)], 1, (64, 70)),
        ([(100, 7), (3, 129)], 128, (128, 256)),
    ],
)
def test_padded_size_is_batch_max_rounded_up(sizes, divisor, expected):
    batch = [sample(h, w, i + 1) for i, (h, w) in enumerate(sizes)]
    images, targets = DetectionCollator(size_divisor=divisor)(batch)
    assert images.shape == (len(sizes), 3, *expected)
    assert images.dtype == torch.float32


def test_images_copied_top_left_and_zero_padded():
    batch = [sample(50, 70, -1.5), sample(64, 33, 2.0)]
    images, _ = DetectionCollator(size_divisor=32)(batch)
    assert torch.equal(images[0, :, :50, :70], batch[0][0])
    assert torch.equal(images[1, :, :64, :33], batch[1][0])
    valid = torch.zeros(2, 3, 64, 96, dtype=torch.bool)
    valid[0, :, :50, :70] = True
    valid[1, :, :64, :33] = True
    assert (images[~valid] == 0).all()


def test_targets_returned_unchanged():
    batch = [sample(8, 8, 1), sample(9, 9, 2)]
    _, targets = DetectionCollator()(batch)
    assert len(targets) == 2 and targets[0] is batch[0][1] and targets[1] is batch[1][1]


def test_works_in_a_dataloader_with_workers():
    data = [sample(10 + i, 20 - i, i) for i in range(6)]
    loader = DataLoader(data, batch_size=3, collate_fn=DetectionCollator(size_divisor=16), num_workers=2)
    shapes = [tuple(images.shape) for images, _ in loader]
    assert shapes == [(3, 3, 16, 32), (3, 3, 16, 32)]


def test_invalid_inputs():
    with pytest.raises(ValueError):
        DetectionCollator(size_divisor=0)
    with pytest.raises(ValueError):
        DetectionCollator()([])
    with pytest.raises(ValueError):
        DetectionCollator()([sample(4, 4, 1), (torch.zeros(1, 4, 4), {})])
