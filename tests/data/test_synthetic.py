"""Synthetic COCO-format dataset generator."""

from __future__ import annotations

import json
import os
import runpy
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data import (
    CocoDetection,
    DetectionCollator,
    build_transforms,
    ensure_synthetic_coco,
    generate_synthetic_coco,
)
from detector.data.synthetic_shapes import SHAPES

SMALL = dict(num_train=10, num_val=8, image_size=64, num_classes=4, min_object_size=8, max_object_size=40,
             max_objects=4)
REPO = Path(__file__).resolve().parents[2]


def load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return generate_synthetic_coco(str(tmp_path_factory.mktemp("synthetic")), **SMALL)


def test_same_seed_gives_identical_files(small_dataset, tmp_path):
    again = generate_synthetic_coco(str(tmp_path / "again"), **SMALL)
    for key in ("train_ann_file", "val_ann_file"):
        assert Path(small_dataset[key]).read_bytes() == Path(again[key]).read_bytes()
    for name in sorted(os.listdir(small_dataset["val_img_dir"])):
        first = Path(small_dataset["val_img_dir"], name).read_bytes()
        assert first == Path(again["val_img_dir"], name).read_bytes()
    other = generate_synthetic_coco(str(tmp_path / "other"), **{**SMALL, "seed": 1})
    assert load(other["train_ann_file"])["annotations"] != load(small_dataset["train_ann_file"])["annotations"]


def test_layout_and_params_record(small_dataset):
    root = small_dataset["root"]
    assert small_dataset["train_ann_file"] == os.path.join(root, "annotations", "instances_train.json")
    assert small_dataset["val_ann_file"] == os.path.join(root, "annotations", "instances_val.json")
    assert len(os.listdir(small_dataset["train_img_dir"])) == 10
    assert len(os.listdir(small_dataset["val_img_dir"])) == 8
    params = load(os.path.join(root, "params.json"))
    assert params["num_train"] == 10 and params["seed"] == 0 and params["image_format"] == "png"


def test_boxes_are_valid_and_inside_their_images(small_dataset):
    for split in ("train", "val"):
        data = load(small_dataset[f"{split}_ann_file"])
        images = {img["id"]: img for img in data["images"]}
        for img in data["images"]:
            with Image.open(os.path.join(small_dataset[f"{split}_img_dir"], img["file_name"])) as pil:
                assert pil.size == (img["width"], img["height"])
            assert 48 <= img["height"] <= 64 and 48 <= img["width"] <= 64  # [0.75, 1] * image_size
        assert len({(img["height"], img["width"]) for img in data["images"]}) > 1
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            img = images[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert 0 < ann["area"] <= w * h
        per_image = {img_id: 0 for img_id in images}
        for ann in data["annotations"]:
            per_image[ann["image_id"]] += 1
        assert 1 <= min(per_image.values()) and max(per_image.values()) <= 4


def test_categories_are_non_contiguous_and_all_present_in_val(small_dataset):
    data = load(small_dataset["val_ann_file"])
    cat_ids = [cat["id"] for cat in data["categories"]]
    assert cat_ids == [1, 3, 5, 7]
    assert len({cat["name"] for cat in data["categories"]}) == 4
    assert {ann["category_id"] for ann in data["annotations"]} == set(cat_ids)


def test_boxes_are_tight_around_the_drawn_shape(tmp_path):
    # One object per image on a grey background: its saturated pixels span exactly the box.
    paths = generate_synthetic_coco(str(tmp_path), **{**SMALL, "max_objects": 1, "num_train": 0, "num_val": 12,
                                                      "num_classes": 6, "min_object_size": 12})
    data = load(paths["val_ann_file"])
    boxes = {ann["image_id"]: ann["bbox"] for ann in data["annotations"]}
    for img in data["images"]:
        pixels = np.asarray(Image.open(os.path.join(paths["val_img_dir"], img["file_name"]))).astype(int)
        saturated = pixels.max(axis=2) - pixels.min(axis=2) > 60  # (H, W)
        rows, cols = np.flatnonzero(saturated.any(axis=1)), np.flatnonzero(saturated.any(axis=0))
        x, y, w, h = boxes[img["id"]]
        assert [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1] == [x, y, x + w, y + h]


def test_shapes_differ_from_each_other():
    grid = (np.arange(48) + 0.5) / 48 * 2 - 1
    masks = [shape(grid[None, :], grid[:, None]) for shape in SHAPES]
    assert all(mask.shape == (48, 48) and 0.15 < mask.mean() <= 1.0 for mask in masks)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).mean() > 0.1, (SHAPES[i].__name__, SHAPES[j].__name__)


def test_crowd_regions_load_as_ignore_boxes(tmp_path):
    paths = generate_synthetic_coco(str(tmp_path), **{**SMALL, "crowd_prob": 1.0, "image_size": 96})
    data = load(paths["train_ann_file"])
    assert sum(ann["iscrowd"] for ann in data["annotations"]) >= 5
    dataset = CocoDetection(paths["train_ann_file"], paths["train_img_dir"])
    assert dataset.stats["num_crowd"] == sum(ann["iscrowd"] for ann in data["annotations"])
    assert any(len(dataset[i][1]["ignore_boxes"]) for i in range(len(dataset)))


def test_loads_through_coco_detection_and_batches(small_dataset):
    transforms = build_transforms(train=True, min_size=[48, 64], max_size=96)
    dataset = CocoDetection(small_dataset["train_ann_file"], small_dataset["train_img_dir"], transforms=transforms,
                            filter_empty=True)
    assert len(dataset) == 10 and dataset.num_classes == 4
    assert dataset.cat_ids == [1, 3, 5, 7] and dataset.class_names[:2] == ["circle", "square"]
    assert dataset.image_ids == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    images, targets = DetectionCollator(size_divisor=32)([dataset[i] for i in range(4)])
    assert images.dtype == torch.float32 and images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
    for target in targets:
        assert len(target["boxes"]) >= 1 and 0 <= int(target["labels"].min()) <= int(target["labels"].max()) < 4


def test_jpeg_and_many_classes(tmp_path):
    paths = generate_synthetic_coco(str(tmp_path), **{**SMALL, "image_format": "jpg", "num_classes": 12,
                                                      "num_val": 10, "max_objects": 6})
    data = load(paths["val_ann_file"])
    assert all(img["file_name"].endswith(".jpg") for img in data["images"])
    assert len({cat["name"] for cat in data["categories"]}) == 12
    assert len({ann["category_id"] for ann in data["annotations"]}) == 12
    image, _ = CocoDetection(paths["val_ann_file"], paths["val_img_dir"])[0]
    assert image.dtype == torch.uint8


def test_too_small_split_and_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="val split"):
        generate_synthetic_coco(str(tmp_path / "a"), **{**SMALL, "num_val": 1, "max_objects": 1})
    with pytest.raises(ValueError):
        generate_synthetic_coco(str(tmp_path / "b"), **{**SMALL, "min_object_size": 50, "max_object_size": 40})
    with pytest.raises(ValueError):
        generate_synthetic_coco(str(tmp_path / "c"), **{**SMALL, "image_format": "gif"})


def test_ensure_generates_once(tmp_path, caplog):
    root = tmp_path / "data" / "synthetic"
    paths = ensure_synthetic_coco(str(root), **SMALL)
    assert os.path.isfile(paths["train_ann_file"]) and os.path.isfile(paths["val_ann_file"])
    assert load(root / "params.json")["max_objects"] == 4
    stamp = os.stat(paths["train_ann_file"]).st_mtime_ns
    again = ensure_synthetic_coco(str(root), **{**SMALL, "seed": 5})  # exists: kept, with a warning
    assert again == paths and os.stat(paths["train_ann_file"]).st_mtime_ns == stamp
    assert any("other parameters" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(root.parent)) == ["synthetic"]  # no temporary folder left behind


def test_ensure_into_existing_folder_and_concurrently(tmp_path):
    existing = tmp_path / "existing"
    (existing / "annotations").mkdir(parents=True)  # e.g. an interrupted earlier run
    paths = ensure_synthetic_coco(str(existing), **SMALL)
    assert len(load(paths["train_ann_file"])["images"]) == 10
    assert len(os.listdir(paths["train_img_dir"])) == 10

    root = tmp_path / "raced"
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: ensure_synthetic_coco(str(root), **SMALL), range(2)))
    assert results[0] == results[1]
    assert len(load(results[0]["val_ann_file"])["images"]) == 8
    assert sorted(os.listdir(tmp_path)) == ["existing", "raced"]


def test_make_synthetic_script(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    argv = ["make_synthetic.py", "--out", str(out), "--num-train", "3", "--num-val", "4", "--image-size", "48",
            "--num-classes", "2", "--min-object-size", "8", "--max-object-size", "24", "--max-objects", "2",
            "--seed", "7", "--crowd-prob", "0.5"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "scripts" / "make_synthetic.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "instances_train.json" in printed and "instances_val.json" in printed
    params = load(out / "params.json")
    assert params["seed"] == 7 and params["num_classes"] == 2 and params["crowd_prob"] == 0.5
    assert len(load(out / "annotations" / "instances_val.json")["images"]) == 4
