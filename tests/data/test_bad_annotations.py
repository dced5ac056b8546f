"""Bad annotation files and bad images through the dataset APIs: every error names the file and the ids.

The command-line side of the same inputs is in tests/tools/test_bad_input.py.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from detector.data import CocoDetection, LVISDetection
from detector.data.detection_dataset import BadImageError

CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}]
LVIS_CATEGORIES = [{"id": 7, "name": "seven", "frequency": "f"}, {"id": 2, "name": "two", "frequency": "r"}]


def ann(ann_id, image_id, category_id, bbox):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 1.0, "iscrowd": 0}


def write(path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def coco_dict(images=((1, 10, 10),), annotations=(), categories=CATEGORIES):
    return {"images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, h, w in images],
            "annotations": list(annotations), "categories": list(categories)}


def lvis_dict():
    """A minimal LVIS v1 file: images named by coco_url, categories with a frequency, neg ids."""
    return {"images": [{"id": 1, "height": 10, "width": 10, "neg_category_ids": [],
                        "not_exhaustive_category_ids": [],
                        "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4], "area": 16.0}],
            "categories": LVIS_CATEGORIES}


# ---------------------------------------------------------------------- not a COCO / LVIS file
@pytest.mark.parametrize("reader", [CocoDetection, LVISDetection])
@pytest.mark.parametrize("content, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00garbage", r"not valid JSON \(not UTF-8"),
    ("{not json", "not valid JSON"),
    ([{"images": []}], r"top level is list, expected an object"),
    ({"images": [], "categories": []}, r"missing key\(s\) \['annotations'\]"),
    ({"images": {}, "annotations": [], "categories": []}, r"key 'images' must hold a list, got dict"),
    ({"images": [], "annotations": "none", "categories": []}, r"key 'annotations' must hold a list, got str"),
])
def test_non_detection_files_name_the_file_and_the_fault(tmp_path, reader, content, expected):
    ann_file = write(tmp_path / "odd.json", content)
    with pytest.raises(ValueError, match=expected) as info:
        reader(ann_file, str(tmp_path))
    assert str(info.value).startswith(f"{ann_file}: ")


def test_lvis_file_read_as_coco_says_to_set_the_format(tmp_path):
    ann_file = write(tmp_path / "lvis_v1_val.json", lvis_dict())
    with pytest.raises(ValueError) as info:
        CocoDetection(ann_file, str(tmp_path))
    message = str(info.value)
    assert ann_file in message and "LVIS" in message and "'frequency'" in message
    assert "data.train.format / data.val.format" in message and "to lvis" in message
    # a LVIS v1 file without frequencies is still recognised by its images
    data = lvis_dict()
    data["categories"] = CATEGORIES
    write(tmp_path / "lvis_v1_val.json", data)
    with pytest.raises(ValueError, match=r"image id 1 lists neg_category_ids.*to lvis"):
        CocoDetection(ann_file, str(tmp_path))
    # read as LVIS, such a file gets no hint to read it as COCO
    with pytest.raises(ValueError, match=r"has frequency None; LVIS needs one of \('r', 'c', 'f'\)$"):
        LVISDetection(ann_file, str(tmp_path))
    write(tmp_path / "lvis_v1_val.json", lvis_dict())
    assert LVISDetection(ann_file, str(tmp_path)).num_classes == 2


def test_coco_file_read_as_lvis_says_to_set_the_format(tmp_path):
    ann_file = write(tmp_path / "instances_val.json", coco_dict(annotations=[ann(1, 1, 7, [0, 0, 2, 2])]))
    with pytest.raises(ValueError) as info:
        LVISDetection(ann_file, str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{ann_file}: category id 2 has frequency None")
    assert "looks like a COCO-format file" in message and "data.train.format / data.val.format" in message
    assert message.endswith("to coco")


def test_coco_images_with_coco_url_are_not_mistaken_for_lvis(tmp_path):
    data = coco_dict()
    data["images"][0]["coco_url"] = "http://images.cocodataset.org/val2017/000000000001.jpg"
    assert CocoDetection(write(tmp_path / "a.json", data), str(tmp_path)).image_ids == [1]


# ---------------------------------------------------------------------- entries
@pytest.mark.parametrize("change, expected", [
    (lambda d: d["images"].append(dict(d["images"][0])), r"image id 1 appears twice in 'images'"),
    (lambda d: d["images"][0].update(id="1"), r"image entry \{'id': '1'.* needs an integer 'id'"),
    (lambda d: d["images"][0].update(height="10"), r"image id 1 has height '10', expected a positive integer"),
    (lambda d: d["images"][0].update(width=0), r"image id 1 has width 0, expected a positive integer"),
    (lambda d: d["images"][0].pop("file_name"), r"image id 1 needs a string 'file_name', got None"),
    (lambda d: d["categories"].append({"id": 7, "name": "again"}), r"category id 7 appears twice"),
    (lambda d: d["categories"].append({"name": "no id"}), r"category entry \{'name': 'no id'\} needs an integer"),
    (lambda d: d["annotations"].append([1, 2]), r"annotation entry \[1, 2\] is not an object"),
    (lambda d: d["annotations"].append({"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}),
     r"annotation id None \(image id 1\) needs an integer 'id'"),
    (lambda d: d["annotations"].append(ann(9, 5, 7, [0, 0, 1, 1])),
     r"annotation id 9 \(image id 5\) refers to an image id not in 'images'"),
])
def test_malformed_entries_are_named(tmp_path, change, expected):
    data = coco_dict(annotations=[ann(1, 1, 7, [0, 0, 2, 2])])
    change(data)
    ann_file = write(tmp_path / "entries.json", data)
    with pytest.raises(ValueError, match=expected) as info:
        CocoDetection(ann_file, str(tmp_path))
    assert str(info.value).startswith(f"{ann_file}: ")


@pytest.mark.parametrize("category_id", [99, None, "7"])
def test_unknown_category_names_annotation_image_and_category(tmp_path, category_id):
    annotation = ann(345, 12, category_id, [0, 0, 2, 2])
    if category_id is None:
        del annotation["category_id"]
    ann_file = write(tmp_path / "cats.json", coco_dict(images=[(12, 10, 10)], annotations=[annotation]))
    for reader, path in ((CocoDetection, ann_file), (LVISDetection, None)):
        if reader is LVISDetection:  # the same check through the LVIS reader
            data = json.loads(open(ann_file).read())
            data["categories"] = LVIS_CATEGORIES
            path = write(tmp_path / "cats_lvis.json", data)
        with pytest.raises(ValueError) as info:
            reader(path, str(tmp_path))
        message = str(info.value)
        assert message == (f"{path}: annotation id 345 (image id 12) has category_id {category_id!r}, which is not "
                           "in 'categories'")


@pytest.mark.parametrize("bbox, expected", [
    ([0, math.nan, 2, 2], "non-finite bbox"),
    ([0, 0, math.inf, 2], "non-finite bbox"),
    ([0, 0, 2], "malformed bbox"),
    ([0, 0, 2, 2, 2], "malformed bbox"),
    (["0", 0, 2, 2], "malformed bbox"),
    ([0, None, 2, 2], "malformed bbox"),
    ([0, True, 2, 2], "malformed bbox"),
    ({"x": 0}, "malformed bbox"),
    (None, "malformed bbox"),
])
def test_nan_inf_and_malformed_boxes_are_rejected_with_ids(tmp_path, bbox, expected):
    ann_file = write(tmp_path / "boxes.json", coco_dict(images=[(4, 10, 10)], annotations=[ann(8, 4, 2, bbox)]))
    with pytest.raises(ValueError) as info:
        CocoDetection(ann_file, str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{ann_file}: annotation id 8 (image id 4) has a {expected}")


@pytest.mark.parametrize("reader", [CocoDetection, LVISDetection])
def test_duplicate_annotation_ids_are_refused_with_file_and_id(tmp_path, reader):
    # pycocotools indexes annotations by id: with a repeated id, perfect detections scored AP 0.72 here.
    data = coco_dict(images=[(1, 10, 10), (2, 10, 10)],
                     annotations=[ann(5, 1, 7, [0, 0, 2, 2]), ann(6, 1, 2, [1, 1, 3, 3]), ann(5, 2, 7, [0, 0, 4, 4])])
    if reader is LVISDetection:
        data["categories"] = LVIS_CATEGORIES
    ann_file = write(tmp_path / "dup.json", data)
    with pytest.raises(ValueError) as info:
        reader(ann_file, None)
    assert str(info.value) == (f"{ann_file}: annotation id 5 appears twice in 'annotations' (again for image id 2); "
                               "annotation ids must be unique")


@pytest.mark.parametrize("field, value, expected", [
    ("area", -4.0, "has area -4.0; an area must be a finite number >= 0"),
    ("area", "16", "has area '16'; an area must be a finite number >= 0"),
    ("area", float("inf"), "has area inf; an area must be a finite number >= 0"),
    ("area", True, "has area True; an area must be a finite number >= 0"),
    ("iscrowd", 2, "has iscrowd 2, expected 0 or 1"),
    ("iscrowd", "no", "has iscrowd 'no', expected 0 or 1"),
])
def test_bad_area_and_iscrowd_values_are_refused_with_ids(tmp_path, field, value, expected):
    bad = ann(8, 3, 2, [0, 0, 2, 2])
    bad[field] = value
    ann_file = write(tmp_path / "area.json", coco_dict(images=[(3, 10, 10)], annotations=[ann(1, 3, 7, [1, 1, 2, 2]),
                                                                                         bad]))
    with pytest.raises(ValueError) as info:
        CocoDetection(ann_file, None)
    assert str(info.value) == f"{ann_file}: annotation id 8 (image id 3) {expected}"


def test_area_and_iscrowd_are_optional_for_the_readers(tmp_path):
    annotations = [ann(1, 1, 7, [0, 0, 2, 2]), ann(2, 1, 2, [1, 1, 3, 3])]
    for annotation in annotations:
        del annotation["area"], annotation["iscrowd"]
    annotations[1]["iscrowd"], annotations[1]["area"] = True, 0  # JSON true is 1; a zero area is allowed
    dataset = CocoDetection(write(tmp_path / "optional.json", coco_dict(annotations=annotations)), None)
    target = dataset.get_target(0)
    assert target["boxes"].tolist() == [[0.0, 0.0, 2.0, 2.0]] and target["ignore_boxes"].tolist() == [[1, 1, 4, 4]]


def test_negative_size_boxes_are_dropped_counted_and_named_in_the_log(tmp_path, caplog):
    annotations = [ann(1, 1, 7, [1, 1, -3, 4]), ann(2, 1, 7, [1, 1, 4, -3]), ann(3, 1, 7, [5, 5, 0, 2]),
                   ann(4, 1, 2, [1, 1, 3, 3])]
    ann_file = write(tmp_path / "neg.json", coco_dict(annotations=annotations))
    with caplog.at_level(logging.INFO, logger="detector.data"):
        dataset = CocoDetection(ann_file, str(tmp_path))
    assert dataset.stats["num_dropped"] == 3 and dataset.stats["num_boxes"] == 1
    assert dataset.dropped_ann_ids == [1, 2, 3]
    assert dataset.get_target(0)["boxes"].tolist() == [[1.0, 1.0, 4.0, 4.0]]
    (message,) = [r.getMessage() for r in caplog.records if r.name == "detector.data"]
    assert "3 dropped as empty (annotation ids 1, 2, 3)" in message and ann_file in message


def test_annotations_only_dataset_needs_no_image_folder(tmp_path):
    ann_file = write(tmp_path / "a.json", coco_dict(annotations=[ann(1, 1, 7, [0, 0, 2, 2])]))
    dataset = CocoDetection(ann_file, None)
    assert dataset.get_target(0)["labels"].tolist() == [1]
    with pytest.raises(RuntimeError, match=r"without an image folder"):
        dataset[0]
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        CocoDetection(ann_file, str(tmp_path / "no_such_dir"))


# ---------------------------------------------------------------------- bad images
def encoded(fmt: str, height: int, width: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


BAD_FILES = {
    "missing": None,
    "empty": b"",
    "garbage": b"this is not an image at all",
    "truncated_png": encoded("PNG", 12, 12)[:60],
    "truncated_jpeg": encoded("JPEG", 12, 12)[:200],
}


@pytest.fixture
def images_with_bad_files(tmp_path):
    """Six 12x12 images with ids 1..6; ids 2 and 5 are missing / corrupt as `kind` says."""

    def make(kind_2: str, kind_5: str):
        img_dir = tmp_path / "images"
        img_dir.mkdir(exist_ok=True)
        for image_id in range(1, 7):
            (img_dir / f"{image_id}.png").write_bytes(encoded("PNG", 12, 12))
        for image_id, kind in ((2, kind_2), (5, kind_5)):
            path = img_dir / f"{image_id}.png"
            if BAD_FILES[kind] is None:
                path.unlink()
            else:
                path.write_bytes(BAD_FILES[kind])
        ann_file = write(tmp_path / "imgs.json", coco_dict(images=[(i, 12, 12) for i in range(1, 7)]))
        return ann_file, str(img_dir)

    return make


@pytest.mark.parametrize("kind, expected", [
    ("missing", "image file not found: {path} (image id 2)"),
    ("empty", "cannot decode image {path} (image id 2): Expected a non empty file"),
    ("garbage", "cannot decode image {path} (image id 2): Unsupported image file"),
    ("truncated_png", "cannot decode image {path} (image id 2): "),
    ("truncated_jpeg", "cannot decode image {path} (image id 2): "),
])
def test_bad_image_error_names_the_file_and_the_image_id(images_with_bad_files, kind, expected):
    ann_file, img_dir = images_with_bad_files(kind, "missing")
    dataset = CocoDetection(ann_file, img_dir)
    with pytest.raises(BadImageError) as info:
        dataset[1]
    message = str(info.value)
    assert message.startswith(expected.format(path=os.path.join(img_dir, "2.png")))
    assert ".cpp:" not in message  # torchvision's C++ source location is stripped
    assert "\n" not in message


def test_bad_image_error_raised_in_a_loader_worker_keeps_its_one_line_message(images_with_bad_files):
    ann_file, img_dir = images_with_bad_files("truncated_jpeg", "missing")
    loader = DataLoader(CocoDetection(ann_file, img_dir), batch_size=2, num_workers=1, collate_fn=list)
    with pytest.raises(BadImageError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith(f"cannot decode image {os.path.join(img_dir, '2.png')} (image id 2): ")
    assert "\n" not in message and "Traceback" not in message
    assert "Caught BadImageError in DataLoader worker process 0" in info.value.worker_traceback


def test_skipped_images_are_counted_over_all_loader_workers(images_with_bad_files, caplog, tmp_path):
    ann_file, img_dir = images_with_bad_files("missing", "garbage")
    dataset = CocoDetection(ann_file, img_dir, on_bad_image="skip")
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=lambda batch: batch[0][1]["image_id"])
    # The workers log in their own processes: collect their records through a file they inherit.
    log_file = tmp_path / "workers.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    data_logger = logging.getLogger("detector.data")
    data_logger.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="detector.data"):
            served = list(loader)
            served_again = list(loader)  # a second epoch meets the same bad files again
    finally:
        data_logger.removeHandler(handler)
        handler.close()
    assert served == served_again == [1, 3, 3, 4, 6, 6]  # each bad image is replaced by the next readable one
    # the workers' counts reach the main process through shared memory
    assert dataset.num_skipped_images == 4
    assert sorted(dataset.bad_image_ids) == [2, 5]
    lines = [line for line in log_file.read_text().splitlines() if "on_bad_image=skip" in line]
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(lines) == 4 and len(warnings) == 2  # each distinct bad image is named once as a warning ...
    assert any(f"image file not found: {os.path.join(img_dir, '2.png')} (image id 2)" in w for w in warnings)
    assert any(f"cannot decode image {os.path.join(img_dir, '5.png')} (image id 5)" in w for w in warnings)
    counts = [tuple(map(int, re.search(r"(\d+) bad images, (\d+) skips so far", line).groups())) for line in lines]
    assert max(counts) == (2, 4)  # ... and the running total covers every worker


def test_workers_and_pickled_copies_do_not_lose_skips(images_with_bad_files):
    import pickle

    ann_file, img_dir = images_with_bad_files("missing", "missing")
    dataset = CocoDetection(ann_file, img_dir, on_bad_image="skip")
    dataset[1]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.num_skipped_images == 1 and clone.bad_image_ids == [2]
