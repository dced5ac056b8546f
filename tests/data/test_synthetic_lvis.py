"""Synthetic LVIS-v1-format, long-tailed dataset generator."""

from __future__ import annotations

import collections
import json
import os
import runpy
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lvis import LVIS
from PIL import Image

from detector.data import (
    DetectionCollator,
    LVISDetection,
    build_transforms,
    ensure_synthetic_lvis,
    generate_synthetic_lvis,
    repeat_factors,
)
from detector.data.synthetic_shapes import class_appearance
from detector.data.synthetic_lvis import frequency_group, planned_train_image_counts

# 3 frequent classes (planned in 120, 117, 115 train images), 2 common (85, 14), 1 rare (8).
SMALL = dict(num_train=130, num_val=20, image_size=64, num_classes=6, num_rare=1, num_common=2, head_images=120,
             min_object_size=8, max_object_size=24, max_objects=5, not_exhaustive_prob=0.3)
REPO = Path(__file__).resolve().parents[2]


def load(path):
    with open(path) as f:
        return json.load(f)


def images_per_category(data):
    images = collections.defaultdict(set)
    for ann in data["annotations"]:
        images[ann["category_id"]].add(ann["image_id"])
    return images


@pytest.fixture(scope="module")
def small_lvis(tmp_path_factory):
    return generate_synthetic_lvis(str(tmp_path_factory.mktemp("synthetic_lvis")), **SMALL)


def test_same_seed_gives_identical_files(small_lvis, tmp_path):
    again = generate_synthetic_lvis(str(tmp_path / "again"), **SMALL)
    for key in ("train_ann_file", "val_ann_file"):
        assert Path(small_lvis[key]).read_bytes() == Path(again[key]).read_bytes()
    for name in sorted(os.listdir(os.path.join(small_lvis["root"], "val2017")))[:5]:
        first = Path(small_lvis["root"], "val2017", name).read_bytes()
        assert first == Path(again["root"], "val2017", name).read_bytes()
    other = generate_synthetic_lvis(str(tmp_path / "other"), **{**SMALL, "seed": 1})
    assert load(other["train_ann_file"])["annotations"] != load(small_lvis["train_ann_file"])["annotations"]


def test_layout_and_lvis_v1_fields(small_lvis):
    root = small_lvis["root"]
    assert small_lvis["train_ann_file"] == os.path.join(root, "annotations", "lvis_v1_train.json")
    assert small_lvis["val_ann_file"] == os.path.join(root, "annotations", "lvis_v1_val.json")
    assert small_lvis["train_img_dir"] == small_lvis["val_img_dir"] == root
    train, val = load(small_lvis["train_ann_file"]), load(small_lvis["val_ann_file"])
    assert len(train["images"]) == 130 and len(val["images"]) == 20
    for split, folder, data in (("train", "train2017", train), ("val", "val2017", val)):
        assert len(os.listdir(os.path.join(root, folder))) == len(data["images"])
        for img in data["images"]:
            assert "file_name" not in img
            assert img["coco_url"] == f"http://images.cocodataset.org/{folder}/{img['id']:012d}.jpg"
            with Image.open(os.path.join(root, folder, f"{img['id']:012d}.jpg")) as pil:
                assert pil.size == (img["width"], img["height"])
        for ann in data["annotations"]:
            assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "segmentation"}  # no iscrowd
            x, y, w, h = ann["bbox"]
            assert ann["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]] and 0 < ann["area"] <= w * h
    train_ids, val_ids = {img["id"] for img in train["images"]}, {img["id"] for img in val["images"]}
    assert not train_ids & val_ids and all(i % 2 == 1 for i in train_ids | val_ids)
    ann_ids = [ann["id"] for ann in train["annotations"] + val["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    assert train["categories"] == val["categories"]
    keys = {"id", "name", "synonyms", "def", "synset", "frequency", "image_count", "instance_count"}
    assert all(set(cat) == keys for cat in train["categories"])
    assert [cat["id"] for cat in train["categories"]] == [1, 3, 5, 7, 9, 11]
    params = load(os.path.join(root, "params.json"))
    assert params["format"] == "lvis" and params["num_rare"] == 1 and params["seed"] == 0


def test_frequency_groups_follow_the_lvis_rule_from_train_counts(small_lvis):
    train = load(small_lvis["train_ann_file"])
    images = images_per_category(train)
    instances = collections.Counter(ann["category_id"] for ann in train["annotations"])
    for cat in train["categories"]:
        count = len(images[cat["id"]])
        assert cat["image_count"] == count and cat["instance_count"] == instances[cat["id"]]
        assert cat["frequency"] == ("r" if count <= 10 else "c" if count <= 100 else "f")
    groups = collections.Counter(cat["frequency"] for cat in train["categories"])
    assert groups == {"f": 3, "c": 2, "r": 1}
    # Every planned class found room: the realised counts are the plan.
    plan = planned_train_image_counts(6, 1, 2, 120, seed=0)
    assert [cat["image_count"] for cat in train["categories"]] == plan
    assert sorted(plan, reverse=True) == [120, 117, 115, 85, 14, 8]


def test_default_plan_is_long_tailed_with_three_groups():
    plan = planned_train_image_counts(40, 8, 16, 200, seed=0)
    groups = collections.Counter(frequency_group(count) for count in plan)
    assert groups == {"r": 8, "c": 16, "f": 16}
    ranked = sorted(plan, reverse=True)
    assert ranked[0] == 200 and ranked[-1] == 1 and min(ranked[:16]) >= 115
    assert 14 <= min(ranked[16:32]) and max(ranked[16:32]) <= 85 and max(ranked[32:]) <= 8
    assert plan != ranked  # groups interleave with the category ids
    assert [frequency_group(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]
    # Up to 40 classes keep distinct (shape, texture) pairs.
    pairs = {(class_appearance(label)[0], class_appearance(label)[2]) for label in range(40)}
    assert len(pairs) == 40


def test_every_class_appears_in_val(small_lvis):
    val = load(small_lvis["val_ann_file"])
    per_class = images_per_category(val)
    assert set(per_class) == {1, 3, 5, 7, 9, 11}
    assert min(len(images) for images in per_class.values()) >= 3  # min_val_images


def test_neg_and_not_exhaustive_ids_are_consistent(small_lvis):
    num_not_exhaustive = 0
    for key in ("train_ann_file", "val_ann_file"):
        data = load(small_lvis[key])
        present = collections.defaultdict(set)
        for ann in data["annotations"]:
            present[ann["image_id"]].add(ann["category_id"])
        for img in data["images"]:
            assert not set(img["neg_category_ids"]) & present[img["id"]]
            assert set(img["not_exhaustive_category_ids"]) <= present[img["id"]]
            num_not_exhaustive += len(img["not_exhaustive_category_ids"])
        assert sum(len(img["neg_category_ids"]) for img in data["images"]) > 0
    assert num_not_exhaustive > 0


def test_loads_with_lvis_api_and_lvis_detection(small_lvis):
    api = LVIS(small_lvis["val_ann_file"])
    assert len(api.get_img_ids()) == 20 and len(api.get_cat_ids()) == 6
    train = load(small_lvis["train_ann_file"])
    transforms = build_transforms(train=True, min_size=[48, 64], max_size=96)
    dataset = LVISDetection(small_lvis["train_ann_file"], small_lvis["train_img_dir"], transforms=transforms,
                            filter_empty=True)
    assert len(dataset) == 130 and dataset.num_classes == 6 and dataset.cat_ids == [1, 3, 5, 7, 9, 11]
    assert dataset.category_frequency == [cat["frequency"] for cat in train["categories"]]
    assert dataset.image_path(0) == os.path.join(small_lvis["root"], "train2017", "000000000001.jpg")
    images, targets = DetectionCollator(size_divisor=32)([dataset[i] for i in range(3)])
    assert images.shape[2] % 32 == 0 and all(len(t["boxes"]) >= 1 for t in targets)
    factors = repeat_factors(dataset.image_category_ids(), 0.5)
    rare = dataset.cat_ids[dataset.category_frequency.index("r")]
    with_rare = [r for r, ids in zip(factors, dataset.image_category_ids()) if rare in ids]
    assert with_rare and min(with_rare) == pytest.approx((0.5 / (8 / 130)) ** 0.5)  # the rare class: 8 images
    val = LVISDetection(small_lvis["val_ann_file"], small_lvis["val_img_dir"])
    assert val[0][0].dtype == torch.uint8


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        generate_synthetic_lvis(str(tmp_path / "a"), **{**SMALL, "num_train": 100})  # head_images 120 > 100
    with pytest.raises(ValueError, match="num_rare"):
        generate_synthetic_lvis(str(tmp_path / "b"), **{**SMALL, "num_rare": 4, "num_common": 3})
    with pytest.raises(ValueError, match="head_images"):
        generate_synthetic_lvis(str(tmp_path / "c"), **{**SMALL, "head_images": 90})
    with pytest.raises(ValueError, match="train split"):
        generate_synthetic_lvis(str(tmp_path / "d"), **{**SMALL, "max_objects": 2})


def test_ensure_generates_once_and_survives_a_race(tmp_path, caplog):
    params = {**SMALL, "num_train": 125, "num_val": 10, "image_size": 48}
    root = tmp_path / "lvis"
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: ensure_synthetic_lvis(str(root), **params), range(2)))
    assert results[0] == results[1]
    paths = results[0]
    assert len(load(paths["val_ann_file"])["images"]) == 10
    stamp = os.stat(paths["train_ann_file"]).st_mtime_ns
    assert ensure_synthetic_lvis(str(root), **{**params, "seed": 3}) == paths  # kept, with a warning
    assert os.stat(paths["train_ann_file"]).st_mtime_ns == stamp
    assert any("other parameters" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(tmp_path)) == ["lvis"]


def test_make_synthetic_script_lvis_format(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    argv = ["make_synthetic.py", "--format", "lvis", "--out", str(out), "--num-train", "125", "--num-val", "8",
            "--image-size", "48", "--num-classes", "4", "--num-rare", "1", "--num-common", "1",
            "--head-images", "110", "--min-object-size", "8", "--max-object-size", "20", "--max-objects", "4"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "scripts" / "make_synthetic.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "lvis_v1_train.json" in printed and "1 rare, 1 common, 2 frequent" in printed
    assert load(out / "params.json")["num_classes"] == 4
    monkeypatch.setattr(sys, "argv", ["make_synthetic.py", "--format", "coco", "--num-rare", "2"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "scripts" / "make_synthetic.py"), run_name="__main__")
    assert "does not take --num-rare" in capsys.readouterr().err
