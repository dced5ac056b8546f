"""LVISDetection on small hand-made LVIS v1 files."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from lvis import LVIS

from detector.data import LVISDetection, build_transforms, repeat_factors

from .conftest import write_image

# Deliberately out of id order, with non-contiguous ids.
CATEGORIES = [
    {"id": 30, "name": "zebra", "frequency": "f", "synonyms": ["zebra"], "def": "", "synset": "zebra.n.01",
     "image_count": 500, "instance_count": 900},
    {"id": 4, "name": "aardvark", "frequency": "r", "synonyms": ["aardvark"], "def": "", "synset": "aardvark.n.01",
     "image_count": 3, "instance_count": 3},
    {"id": 12, "name": "lamp", "frequency": "c", "synonyms": ["lamp"], "def": "", "synset": "lamp.n.02",
     "image_count": 40, "instance_count": 61},
]


def url(folder, image_id):
    return f"http://images.cocodataset.org/{folder}/{image_id:012d}.jpg"


def lvis_image(image_id, height, width, folder="train2017", neg=(), not_exhaustive=(), file_name=None):
    entry = {"id": image_id, "height": height, "width": width, "coco_url": url(folder, image_id), "license": 1,
             "neg_category_ids": list(neg), "not_exhaustive_category_ids": list(not_exhaustive)}
    if file_name is not None:
        entry["file_name"] = file_name
    return entry


def lvis_ann(ann_id, image_id, category_id, bbox):
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "area": float(w * h), "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


@pytest.fixture
def make_lvis(tmp_path):
    """Factory: write an LVIS JSON and, for each image entry, its file where `layout` says; return
    (ann_file, img_dir). layout "nested": img_dir/<folder>/<file> from coco_url; "flat": img_dir/<file>;
    entries with a file_name are written at img_dir/<file_name>; "none" writes no image."""

    def make(images, annotations, categories=CATEGORIES, layout="nested", name="lvis.json"):
        img_dir = tmp_path / "coco"
        img_dir.mkdir(exist_ok=True)
        for img in images:
            if layout == "none":
                continue
            if "file_name" in img:
                path = img_dir / img["file_name"]
            else:
                folder, file = img["coco_url"].split("/")[-2:]
                path = img_dir / folder / file if layout == "nested" else img_dir / file
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, img["height"], img["width"], seed=img["id"])
        ann_file = tmp_path / name
        ann_file.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                                        "categories": categories}))
        return str(ann_file), str(img_dir)

    return make


def two_split_images():
    # LVIS v1 val also uses train2017 images: one image from each COCO folder.
    return [lvis_image(397133, 20, 30, "val2017", neg=[4], not_exhaustive=[30]),
            lvis_image(9, 16, 12, "train2017", neg=[12, 4])]


def test_images_are_found_from_the_coco_url_folder(make_lvis):
    anns = [lvis_ann(1, 397133, 30, (1, 2, 10, 8)), lvis_ann(2, 397133, 12, (0, 0, 5, 5)),
            lvis_ann(3, 9, 4, (2, 2, 4, 4))]
    ann_file, img_dir = make_lvis(two_split_images(), anns)
    dataset = LVISDetection(ann_file, img_dir)
    assert dataset.image_ids == [9, 397133]
    assert dataset.candidate_paths(1)[0] == os.path.join(img_dir, "val2017", "000000397133.jpg")
    image, target = dataset[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert target["image_id"] == 397133 and target["orig_size"] == (20, 30)
    assert target["boxes"].tolist() == [[1.0, 2.0, 11.0, 10.0], [0.0, 0.0, 5.0, 5.0]]
    assert target["labels"].tolist() == [2, 1]  # ids sorted 4, 12, 30 -> labels 0, 1, 2
    assert target["ignore_boxes"].shape == (0, 4)
    image, target = dataset[0]
    assert image.shape == (3, 16, 12) and target["labels"].tolist() == [0]


def test_flat_image_folder_is_the_fallback(make_lvis):
    ann_file, img_dir = make_lvis(two_split_images(), [], layout="flat")
    dataset = LVISDetection(ann_file, img_dir)
    assert dataset[1][0].shape == (3, 20, 30)
    assert dataset.image_path(1) == os.path.join(img_dir, "000000397133.jpg")


def test_file_name_takes_precedence_over_the_url(make_lvis):
    images = [lvis_image(5, 10, 14, "val2017", file_name="custom/five.png")]
    ann_file, img_dir = make_lvis(images, [lvis_ann(1, 5, 12, (1, 1, 3, 3))])
    dataset = LVISDetection(ann_file, img_dir)
    assert dataset.candidate_paths(0) == [os.path.join(img_dir, "custom/five.png")]
    assert dataset[0][0].shape == (3, 10, 14)
    assert dataset.get_image_info(0)["file_name"] == "custom/five.png"


def test_missing_image_names_the_id_and_every_path_tried(make_lvis):
    ann_file, img_dir = make_lvis(two_split_images(), [], layout="none")
    dataset = LVISDetection(ann_file, img_dir)
    with pytest.raises(RuntimeError) as info:
        dataset[1]
    message = str(info.value)
    assert "image id 397133" in message
    assert os.path.join(img_dir, "val2017", "000000397133.jpg") in message
    assert os.path.join(img_dir, "000000397133.jpg") in message
    skipping = LVISDetection(ann_file, img_dir, on_bad_image="skip")
    with pytest.raises(RuntimeError, match="no readable image"):
        skipping[0]


def test_categories_and_frequency_per_label(make_lvis):
    ann_file, img_dir = make_lvis(two_split_images(), [], layout="none")
    dataset = LVISDetection(ann_file, img_dir)
    assert dataset.num_classes == 3
    assert dataset.cat_ids == dataset.label_to_cat_id == [4, 12, 30]
    assert dataset.cat_id_to_label == {4: 0, 12: 1, 30: 2}
    assert dataset.class_names == ["aardvark", "lamp", "zebra"]
    assert dataset.category_frequency == ["r", "c", "f"]


def test_neg_and_not_exhaustive_ids_are_kept_per_image(make_lvis):
    images = two_split_images() + [{"id": 11, "height": 8, "width": 8, "coco_url": url("train2017", 11)}]
    ann_file, img_dir = make_lvis(images, [lvis_ann(1, 9, 4, (0, 0, 2, 2)), lvis_ann(2, 397133, 30, (0, 0, 2, 2))],
                                  layout="none")
    dataset = LVISDetection(ann_file, img_dir)
    assert dataset.get_image_info(0) == {
        "id": 9, "file_name": "train2017/000000000009.jpg", "height": 16, "width": 12,
        "coco_url": url("train2017", 9), "neg_category_ids": [12, 4], "not_exhaustive_category_ids": [],
    }
    info = dataset.get_image_info(2)
    assert info["id"] == 397133 and info["neg_category_ids"] == [4] and info["not_exhaustive_category_ids"] == [30]
    assert dataset.get_image_info(1)["neg_category_ids"] == []  # an entry without the lists gets empty ones
    filtered = LVISDetection(ann_file, img_dir, filter_empty=True)  # image 11 has no box
    assert filtered.image_ids == [9, 397133]
    assert filtered.get_image_info(1)["not_exhaustive_category_ids"] == [30]
    assert filtered.stats["num_filtered_images"] == 1


def test_metadata_for_sampling(make_lvis):
    anns = [lvis_ann(1, 9, 30, (0, 0, 4, 4)), lvis_ann(2, 9, 30, (4, 4, 4, 4)), lvis_ann(3, 9, 4, (1, 1, 2, 2)),
            lvis_ann(4, 397133, 30, (0, 0, 3, 3))]
    ann_file, img_dir = make_lvis(two_split_images(), anns, layout="none")
    dataset = LVISDetection(ann_file, img_dir)
    assert dataset.aspect_ratios() == [16 / 12, 20 / 30]
    assert dataset.image_category_ids() == [[4, 30], [30]]
    # f_4 = 1/2, f_30 = 2/2; with t = 2: r_4 = sqrt(2 / 0.5) = 2, r_30 = sqrt(2 / 1) = 1.414...; image 9 has both
    assert repeat_factors(dataset.image_category_ids(), 2.0) == pytest.approx([2.0, 2**0.5])
    assert dataset.stats["num_boxes"] == 4 and dataset.stats["num_crowd"] == 0


def test_iscrowd_is_not_an_lvis_field_so_such_boxes_stay_boxes(make_lvis):
    ann = {**lvis_ann(1, 9, 4, (0, 0, 2, 2)), "iscrowd": 1}
    ann_file, img_dir = make_lvis(two_split_images(), [ann], layout="none")
    target = LVISDetection(ann_file, img_dir).get_target(0)
    assert target["labels"].tolist() == [0] and target["ignore_boxes"].shape == (0, 4)


def test_lvis_index_pickling_and_transforms(make_lvis):
    ann_file, img_dir = make_lvis(two_split_images(), [lvis_ann(7, 9, 12, (2, 2, 6, 6))])
    dataset = LVISDetection(ann_file, img_dir, transforms=build_transforms(train=False, min_size=32, max_size=64))
    assert isinstance(dataset.lvis, LVIS) and dataset.lvis.get_ann_ids(img_ids=[9]) == [7]
    clone = pickle.loads(pickle.dumps(dataset))
    (image, target), (clone_image, clone_target) = dataset[0], clone[0]
    assert image.dtype == torch.float32 and target["img_size"] == (43, 32)  # 16 x 12 with its short side at 32
    assert torch.equal(image, clone_image) and torch.equal(target["boxes"], clone_target["boxes"])
    sx, sy = 32 / 12, 43 / 16
    assert np.allclose(target["boxes"].numpy(), [[2 * sx, 2 * sy, 8 * sx, 8 * sy]], atol=1e-4)


# ---------------------------------------------------------------------- malformed files
@pytest.mark.parametrize("category, expected", [
    ({"id": 4, "name": "aardvark"}, r"category id 4 has frequency None"),
    ({"id": 4, "name": "aardvark", "frequency": "x"}, r"category id 4 has frequency 'x'"),
])
def test_bad_frequency_is_named(make_lvis, category, expected):
    ann_file, img_dir = make_lvis([], [], categories=[category], layout="none")
    with pytest.raises(ValueError, match=expected):
        LVISDetection(ann_file, img_dir)


def test_bad_image_entries_are_named(make_lvis):
    bad_neg = [lvis_image(9, 16, 12, neg=[99])]
    ann_file, img_dir = make_lvis(bad_neg, [], layout="none")
    with pytest.raises(ValueError, match=r"image id 9 has neg_category_ids \[99\]"):
        LVISDetection(ann_file, img_dir)
    no_file = [{"id": 3, "height": 5, "width": 5}]
    ann_file, img_dir = make_lvis(no_file, [], layout="none", name="nofile.json")
    with pytest.raises(ValueError, match=r"nofile\.json: image entry 3 has neither 'file_name' nor 'coco_url'"):
        LVISDetection(ann_file, img_dir)


def test_malformed_json_names_the_file(tmp_path):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json.*not valid JSON"):
        LVISDetection(str(ann_file), str(tmp_path))
    ann_file.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match=r"broken\.json.*LVIS.*annotations"):
        LVISDetection(str(ann_file), str(tmp_path))
    ann_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"broken\.json.*LVIS"):
        LVISDetection(str(ann_file), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        LVISDetection(str(tmp_path / "missing.json"), str(tmp_path))
