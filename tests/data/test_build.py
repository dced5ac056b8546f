"""build_train_loader on training sets without a single usable image: the error names the annotation file."""

import json
from pathlib import Path

import pytest

from detector.config import load_config
from detector.data.build import build_train_loader

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
CATEGORIES = [{"id": i + 1, "name": f"class{i}"} for i in range(6)]


def config_for(ann_file: Path, img_dir: Path, filter_empty: bool):
    return load_config(CONFIG, [f"data.train.ann_file={ann_file}", f"data.train.img_dir={img_dir}",
                                f"data.train.filter_empty={str(filter_empty).lower()}", "data.batch_size=2",
                                "data.num_workers=0"])


def write(path: Path, images: list, annotations: list) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def image(image_id: int) -> dict:
    return {"id": image_id, "file_name": f"{image_id}.png", "height": 32, "width": 32}


def test_a_file_without_images_is_named(tmp_path):
    ann_file = write(tmp_path / "train.json", [], [])
    with pytest.raises(ValueError) as info:
        build_train_loader(config_for(ann_file, tmp_path, filter_empty=False))
    assert str(info.value) == f"{ann_file}: the training set is empty: the file lists no images"


def test_every_image_filtered_out_names_the_file_and_filter_empty(tmp_path):
    # image 1: no annotation; image 2: a crowd region only; image 3: a box outside the image (dropped)
    crowd = {"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64.0, "iscrowd": 1}
    outside = {"id": 2, "image_id": 3, "category_id": 2, "bbox": [40, 40, 8, 8], "area": 64.0, "iscrowd": 0}
    ann_file = write(tmp_path / "train.json", [image(1), image(2), image(3)], [crowd, outside])
    with pytest.raises(ValueError) as info:
        build_train_loader(config_for(ann_file, tmp_path, filter_empty=True))
    assert str(info.value) == (f"{ann_file}: the training set is empty: none of its 3 images has a non-crowd box, "
                               "1 box was dropped as empty, and data.train.filter_empty=true drops images "
                               "without boxes")


def test_images_without_boxes_still_train_when_not_filtered(tmp_path):
    ann_file = write(tmp_path / "train.json", [image(1), image(2)], [])
    loader, sampler = build_train_loader(config_for(ann_file, tmp_path, filter_empty=False))
    assert len(loader.dataset) == 2 and len(sampler) == 1
