"""Exact round trips between COCO, YOLO and VOC (as defined in detector/conversion/yolo.py), and converted
files read by focaldet's COCO reader and by pycocotools, whose evaluation scores the ground truth itself 1.0."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.conversion.coco_json import write_coco_json
from detector.conversion.voc import voc_to_coco
from detector.conversion.yolo import coco_to_yolo, yolo_to_coco
from detector.data import CocoDetection

from .conftest import save_image, voc_xml, write_text

# (file name, width, height): nested and non-ASCII names, an image without boxes, and images as wide and as
# tall as the documented limit of exact round trips allows (66,666 pixels), where 6 written decimals would
# already move corners by hundredths of a pixel.
IMAGES = [("a.png", 64, 48), ("nested/deeper/ñandú 鳥.jpg", 33, 17), ("empty.png", 5, 5),
          ("wide.png", 66000, 3), ("tall.png", 2, 40000)]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "pájaro"}]


def random_box(rng: random.Random, width: int, height: int) -> list[float]:
    """A box whose corners have 2 decimals (like COCO's own), inside the image."""
    x1, y1 = round(rng.uniform(0, width - 1), 2), round(rng.uniform(0, height - 1), 2)
    x2, y2 = round(rng.uniform(x1 + 0.01, width), 2), round(rng.uniform(y1 + 0.01, height), 2)
    return [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]


@pytest.fixture
def coco_dataset(tmp_path):
    """A COCO file over real image files: border, one-pixel, random two-decimal and crowd boxes."""
    rng = random.Random(0)
    images, annotations = [], []
    for image_id, (file_name, width, height) in enumerate(IMAGES, start=100):
        save_image(tmp_path / "images" / file_name, width, height)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        if file_name == "empty.png":
            continue
        boxes = [[0, 0, width, height], [0, 0, 1, 1], [width - 1, height - 1, 1, 1]]
        boxes += [random_box(rng, width, height) for _ in range(20)]
        for box in boxes:
            annotations.append({"id": len(annotations) + 7, "image_id": image_id, "bbox": box, "area": 1.0,
                                "category_id": rng.choice([1, 2, 3]), "iscrowd": 0})
    annotations.append({"id": 999, "image_id": 100, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25.0,
                        "iscrowd": 1})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def by_file_name(dataset: dict, with_crowd: bool = True) -> dict:
    """file name -> (width, height, [(class name, bbox, iscrowd) in annotation order])."""
    names = {cat["id"]: cat["name"] for cat in dataset["categories"]}
    files = {image["id"]: image["file_name"] for image in dataset["images"]}
    out = {image["file_name"]: (image["width"], image["height"], []) for image in dataset["images"]}
    for ann in dataset["annotations"]:
        if with_crowd or not ann["iscrowd"]:
            out[files[ann["image_id"]]][2].append((names[ann["category_id"]], ann["bbox"], ann["iscrowd"]))
    return out


def test_coco_yolo_coco_is_exact(coco_dataset, tmp_path):
    original = json.loads(coco_dataset.read_text())
    coco_to_yolo(coco_dataset, tmp_path / "yolo", images=tmp_path / "images")
    back = yolo_to_coco(tmp_path / "yolo", ["cat", "dog", "pájaro"], images=tmp_path / "images").dataset
    assert back["categories"] == CATEGORIES
    # Every image (the empty one too) with its size read back from the image file; every non-crowd box in
    # order, each value the same float (the originals lie on the 3-decimal grid).
    assert by_file_name(back) == by_file_name(original, with_crowd=False)
    assert sum(len(v[2]) for v in by_file_name(back).values()) == 4 * 23


def test_yolo_coco_yolo_within_the_documented_bound(tmp_path):
    """Ultralytics-style labels with 6 decimals come back within 5e-4 / side + 5e-9 (cx, cy) and
    1e-3 / side + 5e-9 (w, h): two corners rounded to 3 decimals of a pixel, 8 decimals written."""
    rng = random.Random(1)
    sizes = {"x": (640, 480), "sub/y": (1333, 800), "z": (7, 5)}
    originals = {}
    for stem, (width, height) in sizes.items():
        save_image(tmp_path / "images" / f"{stem}.jpg", width, height)
        lines = []
        for _ in range(0 if stem == "z" else 15):
            w, h = rng.uniform(0.01, 0.5), rng.uniform(0.01, 0.5)
            lines.append([rng.randrange(3), rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2), w, h])
        text = "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in lines)
        write_text(tmp_path / "labels" / f"{stem}.txt", text)
        originals[f"{stem}.txt"] = [[float(v) for v in line.split()] for line in text.splitlines()]
    result = yolo_to_coco(tmp_path / "labels", ["a", "b", "c"])
    write_coco_json(result.dataset, tmp_path / "labels.json")
    coco_to_yolo(tmp_path / "labels.json", tmp_path / "again")
    for rel_path, lines in originals.items():
        width, height = sizes[rel_path[:-4]]
        back = [[float(v) for v in line.split()] for line in (tmp_path / "again" / rel_path).read_text().splitlines()]
        assert len(back) == len(lines)
        for original, returned in zip(lines, back):
            assert returned[0] == original[0]
            bounds = (5e-4 / width, 5e-4 / height, 1e-3 / width, 1e-3 / height)
            for value, value_back, bound in zip(original[1:], returned[1:], bounds):
                assert abs(value_back - value) <= bound + 5e-9 + 1e-12


def write_voc(tmp_path: Path) -> Path:
    root = tmp_path / "VOC"
    save_image(root / "JPEGImages" / "1.jpg", 40, 30)
    write_text(root / "Annotations" / "1.xml", voc_xml("1.jpg", (40, 30), [
        {"name": "dog", "box": (1, 1, 40, 30)}, {"name": "cat", "box": (40, 30, 40, 30)},
        {"name": "cat", "box": (3, 4, 17, 9), "difficult": 1}, {"name": "dog", "box": (5, 5, 6, 6), "truncated": 1}]))
    save_image(root / "JPEGImages" / "dir" / "é.png", 12, 9)
    write_text(root / "Annotations" / "dir" / "é.xml", voc_xml("é.png", None, [{"name": "cat", "box": (2, 3, 4, 5)}]))
    save_image(root / "JPEGImages" / "none.jpg", 8, 8)
    write_text(root / "Annotations" / "none.xml", voc_xml("none.jpg", (8, 8), []))
    return root


@pytest.mark.parametrize("keep_difficult", [True, False])
def test_voc_coco_yolo_coco_is_exact(tmp_path, keep_difficult):
    root = write_voc(tmp_path)
    first = voc_to_coco(root / "Annotations", keep_difficult=keep_difficult).dataset
    write_coco_json(first, tmp_path / "voc.json")
    coco_to_yolo(tmp_path / "voc.json", tmp_path / "yolo", images=root / "JPEGImages")
    back = yolo_to_coco(tmp_path / "yolo", ["cat", "dog"], images=root / "JPEGImages").dataset
    assert back["categories"] == first["categories"]
    # Difficult boxes kept as boxes survive; as ignore regions (iscrowd) YOLO cannot hold them.
    assert by_file_name(back) == by_file_name(first, with_crowd=keep_difficult)


def test_converted_files_load_with_focaldet_and_pycocotools(tmp_path):
    root = write_voc(tmp_path)
    ann_file = tmp_path / "voc.json"
    write_coco_json(voc_to_coco(root / "Annotations").dataset, ann_file)
    dataset = CocoDetection(str(ann_file), str(root / "JPEGImages"))
    assert len(dataset) == 3 and dataset.class_names == ["cat", "dog"]
    image, target = dataset[0]  # 1.jpg: decoded, and its size agrees with the JSON (else BadImageError)
    assert image.shape == (3, 30, 40)
    assert torch.equal(target["boxes"], torch.tensor([[0, 0, 40, 30], [39, 29, 40, 30], [4, 4, 6, 6]],
                                                     dtype=torch.float32))
    assert target["labels"].tolist() == [1, 0, 1]
    assert torch.equal(target["ignore_boxes"], torch.tensor([[2, 3, 17, 9]], dtype=torch.float32))
    image, target = dataset[1]  # dir/é.png: nested, non-ASCII, size read from its header
    assert image.shape == (3, 9, 12) and target["boxes"].tolist() == [[1, 2, 4, 5]]
    assert dataset[2][1]["boxes"].shape == (0, 4)

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
        detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                      for a in coco.dataset["annotations"] if not a["iscrowd"]]
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    assert evaluator.stats[0] == pytest.approx(1.0)  # AP of the ground truth itself
    assert coco.loadImgs(2)[0]["file_name"] == "dir/é.png"
