"""read_image / decode_image_file: the conversions on hand-made pixels, and errors that name the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data.image_io import ImageReadError, decode_image_file, read_image

RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4  # (H=4, W=5, 3), distinct values


def test_files_of_every_kind_decode_to_the_same_rgb(tmp_path):
    expected = torch.from_numpy(RGB).permute(2, 0, 1)
    for suffix in ("png", "bmp", "tiff", "webp"):  # torchvision decodes png / webp, PIL the others
        Image.fromarray(RGB).save(tmp_path / f"x.{suffix}", **({"lossless": True} if suffix == "webp" else {}))
        assert torch.equal(decode_image_file(tmp_path / f"x.{suffix}"), expected), suffix
    Image.fromarray(np.dstack([RGB, np.zeros((4, 5), np.uint8)])).save(tmp_path / "rgba.png")
    assert torch.equal(read_image(tmp_path / "rgba.png"), expected)  # alpha dropped, pixels kept


def test_gray_and_sixteen_bit_values():
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    assert torch.equal(read_image(gray), torch.from_numpy(gray)[None].expand(3, 2, 2))
    sixteen = np.array([[0, 257], [65535, 511]], dtype=np.uint16)  # v >> 8: 0, 1, 255, 1
    assert read_image(Image.fromarray(sixteen))[0].tolist() == [[0, 1], [255, 1]]
    assert read_image(torch.from_numpy(sixteen.astype(np.int32)).to(torch.uint16))[2].tolist() == [[0, 1], [255, 1]]


def test_exif_orientation_is_applied_to_files_and_pil_images(tmp_path):
    image = Image.fromarray(RGB)
    exif = image.getexif()
    exif[0x0112] = 8  # stored turned: viewers rotate it 90 degrees counter-clockwise
    image.save(tmp_path / "turned.png", exif=exif)
    upright = torch.rot90(torch.from_numpy(RGB).permute(2, 0, 1), k=1, dims=(1, 2))  # (3, 5, 4)
    assert torch.equal(read_image(tmp_path / "turned.png"), upright)
    assert torch.equal(read_image(Image.open(tmp_path / "turned.png")), upright)
    assert read_image(tmp_path / "turned.png").shape == (3, 5, 4)
    assert decode_image_file(tmp_path / "turned.png", exif_orientation=False).shape == (3, 4, 5)


def test_float_tensors_are_kept_and_checked():
    image = torch.rand(3, 4, 5)
    assert torch.equal(read_image(image), image)
    with pytest.raises(ImageReadError, match=r"\[0, 1\], got \[0, 255\]"):
        read_image(torch.tensor([[[0.0, 255.0]]]).expand(3, 1, 2))
    with pytest.raises(ImageReadError, match=r"\(H, W, 3\) tensor needs .permute"):
        read_image(torch.zeros(5, 4, 3, dtype=torch.uint8))  # an (H, W, 3) tensor
    with pytest.raises(ImageReadError, match="from a list"):
        read_image([1, 2, 3])
    with pytest.raises(ImageReadError, match="empty"):
        read_image(np.zeros((0, 4, 3), np.uint8))
