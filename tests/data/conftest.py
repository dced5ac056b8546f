"""Fixtures for the data tests: tiny images and hand-made COCO-format files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Write a random RGB PNG of the given size and return its pixels (H, W, 3) uint8."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def make_coco(tmp_path):
    """Factory: write images (random pixels) and a COCO JSON; return (ann_file, img_dir) as strings.

    `images` is a list of (image_id, height, width); file names are "<id>.png".
    """

    def make(images, annotations, categories, write_images=True, name="instances.json"):
        img_dir = tmp_path / "images"
        img_dir.mkdir(exist_ok=True)
        image_entries = []
        for image_id, height, width in images:
            file_name = f"{image_id}.png"
            if write_images:
                write_image(img_dir / file_name, height, width, seed=image_id)
            image_entries.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        ann_file = tmp_path / name
        ann_file.write_text(json.dumps({"images": image_entries, "annotations": annotations,
                                        "categories": categories}))
        return str(ann_file), str(img_dir)

    return make

