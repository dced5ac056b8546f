"""YOLO txt <-> COCO on hand-made files: the normalised-centre rule both ways, names files and data YAMLs,
layouts, header-only size reading, and every malformed case stopping with one error naming file and line."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image, ImageFile

from detector.conversion.dataset_files import ConversionError, read_class_names
from detector.conversion.yolo import coco_to_yolo, yolo_to_coco

from .conftest import save_image, write_text

NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def ultralytics(tmp_path):
    """images/train + labels/train with a 200x100 image, an empty label file and a nested non-ASCII image."""
    root = tmp_path / "pets"
    save_image(root / "images" / "train" / "a.jpg", 200, 100)
    # By hand: cx 0.125, w 0.15 of 200 -> x 10..40; cy 0.4, h 0.4 of 100 -> y 20..60.
    # The whole image; a one-pixel box in the bottom-left corner: x 0..1, y 99..100.
    write_text(root / "labels" / "train" / "a.txt",
               "0 0.125 0.4 0.15 0.4\n1 0.5 0.5 1 1\n\n2 0.0025 0.995 0.005 0.01\n")
    save_image(root / "images" / "train" / "empty.png", 30, 20)
    write_text(root / "labels" / "train" / "empty.txt", "")
    save_image(root / "images" / "train" / "sub" / "ç 猫.PNG", 50, 40)
    write_text(root / "labels" / "train" / "sub" / "ç 猫.txt", "2 0.5 0.5 0.2 0.25\n")  # x 20..30, y 15..25
    save_image(root / "images" / "train" / "unlabelled.jpg", 8, 8)
    return root


def test_yolo_folder_to_coco(ultralytics):
    result = yolo_to_coco(ultralytics / "labels" / "train", NAMES)
    dataset = result.dataset
    assert result.images_root == ultralytics / "images" / "train"  # labels/ -> images/
    assert [(i["file_name"], i["width"], i["height"]) for i in dataset["images"]] == [
        ("a.jpg", 200, 100), ("empty.png", 30, 20), ("sub/ç 猫.PNG", 50, 40)]
    assert dataset["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    assert [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in dataset["annotations"]] == [
        (1, 1, [10.0, 20.0, 30.0, 40.0], 0), (1, 2, [0.0, 0.0, 200.0, 100.0], 0), (1, 3, [0.0, 99.0, 1.0, 1.0], 0),
        (3, 3, [20.0, 15.0, 10.0, 10.0], 0)]
    assert result.notes == [f"1 images under {ultralytics / 'images' / 'train'} have no label file and are not "
                            "included (an empty label file includes an image as a background image)"]


def test_labels_beside_images_and_names_file_skipped(tmp_path):
    save_image(tmp_path / "x.bmp", 10, 10)
    write_text(tmp_path / "x.txt", "1 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "classes.txt", "a\nb\n")  # LabelImg's names file, not labels
    dataset = yolo_to_coco(tmp_path, read_class_names(tmp_path / "classes.txt")).dataset
    assert [i["file_name"] for i in dataset["images"]] == ["x.bmp"]
    assert dataset["annotations"][0]["bbox"] == [4.0, 3.0, 2.0, 4.0]
    assert dataset["annotations"][0]["category_id"] == 2


def test_class_names_from_files(tmp_path):
    assert read_class_names(write_text(tmp_path / "n.txt", " cat \ndog\n\n\n")) == ["cat", "dog"]
    assert read_class_names(write_text(tmp_path / "a.yaml", "names: [cat, dog]\n")) == ["cat", "dog"]
    ultralytics_yaml = "path: ../pets\ntrain: images/train\nnc: 3\nnames:\n  2: bird\n  0: cat\n  1: dog\n"
    assert read_class_names(write_text(tmp_path / "d.yaml", ultralytics_yaml)) == ["cat", "dog", "bird"]
    bad = [("b.txt", "cat\n\ndog\n", r"b.txt:2: empty line"),
           ("c.txt", "cat\ndog\ncat\n", r"class name 'cat' appears twice \(classes 0 and 2\)"),
           ("e.yaml", "names:\n  0: cat\n  2: dog\n", r"keys of 'names' must be the class indices 0..1"),
           ("f.yaml", "nc: 3\nnames: [cat, dog]\n", r"'nc' is 3 but 'names' holds 2 classes"),
           ("g.yaml", "train: x\n", r"needs a 'names:' key"),
           ("h.yaml", "names: [cat\n", r"h.yaml:2: not valid YAML")]
    for name, text, pattern in bad:
        with pytest.raises(ConversionError, match=pattern):
            read_class_names(write_text(tmp_path / name, text))


def test_sizes_come_from_headers_without_decoding(tmp_path, monkeypatch):
    """No image is decoded: ImageFile.load (every decoder's entry) is made to fail, and the sizes still come,
    EXIF orientation included, for a JPEG and a PNG with an eXIf chunk."""
    save_image(tmp_path / "images" / "j.jpg", 30, 20, orientation=6)
    save_image(tmp_path / "images" / "p.png", 30, 20, orientation=8)
    save_image(tmp_path / "images" / "plain.png", 30, 20)
    for stem in ("j", "p", "plain"):
        write_text(tmp_path / "labels" / f"{stem}.txt", "0 0.5 0.5 0.5 0.5\n")

    def no_decoding(self):
        raise AssertionError(f"{self.filename} was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(AssertionError, match="was decoded"):  # the trap works
        Image.open(tmp_path / "images" / "j.jpg").load()
    images = yolo_to_coco(tmp_path / "labels", ["a"]).dataset["images"]
    assert [(i["width"], i["height"]) for i in images] == [(20, 30), (20, 30), (30, 20)]
    images = yolo_to_coco(tmp_path / "labels", ["a"], exif_orientation=False).dataset["images"]
    assert [(i["width"], i["height"]) for i in images] == [(30, 20)] * 3


def test_tolerance_clips_small_overruns_and_refuses_larger(tmp_path):
    save_image(tmp_path / "a.png", 100, 50)
    label = write_text(tmp_path / "a.txt", "0 0.5 0.5 1.0005 1\n")  # 0.05 pixel past each side
    result = yolo_to_coco(tmp_path, ["a"])
    assert result.dataset["annotations"][0]["bbox"] == [0.0, 0.0, 100.0, 50.0]
    assert result.notes[0].startswith("1 boxes overran their image")
    write_text(label, "0 0.5 0.5 1.003 1\n")
    with pytest.raises(ConversionError, match=rf"^{label}:1: box .* reaches outside \[0, 1\] by more than 0.001"):
        yolo_to_coco(tmp_path, ["a"])


BAD_LINES = [
    ("four_numbers", "0 0.5 0.5 0.1", "expected 5 values (class cx cy w h), got 4"),
    ("six_numbers", "0 0.5 0.5 0.1 0.1 0.93", "expected 5 values (class cx cy w h), got 6"),
    ("polygon", "0 0.1 0.1 0.4 0.1 0.4 0.4", "got 7 (a polygon of segmentation labels?"),
    ("class_out_of_range", "3 0.5 0.5 0.1 0.1", "class index 3 is out of range: the class list has 3 names"),
    ("negative_class", "-1 0.5 0.5 0.1 0.1", "class index -1 is out of range"),
    ("fractional_class", "1.5 0.5 0.5 0.1 0.1", "class index '1.5' is not an integer"),
    ("outside", "0 1.5 0.5 0.1 0.1", "reaches outside [0, 1]"),
    ("edge_outside", "0 0.98 0.5 0.1 0.1", "reaches outside [0, 1]"),
    ("non_numeric", "0 0.5 abc 0.1 0.1", "'abc' is not a finite number"),
    ("nan", "0 nan 0.5 0.1 0.1", "'nan' is not a finite number"),
    ("zero_width", "0 0.5 0.5 0 0.1", "width and height must be > 0"),
    ("sub_millipixel", "0 0.5 0.5 0.000001 0.1", "narrower than a thousandth of a pixel"),
]


@pytest.mark.parametrize("line,words", [case[1:] for case in BAD_LINES], ids=[case[0] for case in BAD_LINES])
def test_malformed_lines_name_file_and_line(tmp_path, line, words):
    save_image(tmp_path / "a.png", 100, 50)
    label = write_text(tmp_path / "a.txt", f"0 0.5 0.5 0.1 0.1\n\n{line}\n")
    with pytest.raises(ConversionError) as err:
        yolo_to_coco(tmp_path, NAMES)
    assert str(err.value).startswith(f"{label}:3: "), err.value
    assert words in str(err.value) and "\n" not in str(err.value)


def test_labels_without_image_and_ambiguous_images(tmp_path):
    label = write_text(tmp_path / "labels" / "lost.txt", "0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "images").mkdir()
    with pytest.raises(ConversionError, match=rf"^{label}: no image lost\.\* .* in {tmp_path / 'images'}$"):
        yolo_to_coco(tmp_path / "labels", NAMES)
    save_image(tmp_path / "images" / "lost.jpg", 10, 10)
    save_image(tmp_path / "images" / "lost.png", 10, 10)
    with pytest.raises(ConversionError, match=r"more than one image for these labels: lost.jpg, lost.png"):
        yolo_to_coco(tmp_path / "labels", NAMES)


def coco_file(tmp_path, images, annotations, categories):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 1.0,
            "iscrowd": iscrowd}


def test_coco_to_yolo_by_hand(tmp_path):
    images = [{"id": 9, "file_name": "sub/a.png", "width": 200, "height": 100},
              {"id": 4, "file_name": "b.jpg", "width": 20, "height": 10}]
    annotations = [ann(1, 9, 7, [10, 20, 30, 40]), ann(2, 9, 3, [190, 0, 20, 100]),  # overruns x by 10
                   ann(3, 9, 3, [0, 0, 5, 5], iscrowd=1), ann(4, 9, 7, [300, 0, 10, 10])]  # no area inside
    path = coco_file(tmp_path, images, annotations, [{"id": 7, "name": "ant"}, {"id": 3, "name": "zebra"}])
    export = coco_to_yolo(path, tmp_path / "yolo")
    # Sorted category ids 3, 7 -> class indices 0 (zebra), 1 (ant).
    # Box 1: cx = (10 + 15) / 200, cy = (20 + 20) / 100, w = 30 / 200, h = 40 / 100.
    # Box 2 clipped to x 190..200: cx = 195 / 200, w = 10 / 200.
    assert (tmp_path / "yolo" / "sub" / "a.txt").read_text() == "1 0.125 0.4 0.15 0.4\n0 0.975 0.5 0.05 1\n"
    assert (tmp_path / "yolo" / "b.txt").read_text() == ""  # an image without boxes keeps an empty file
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "zebra\nant\n"
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data == {"nc": 2, "names": {0: "zebra", 1: "ant"}}
    assert export.summary == "2 label files (1 empty), 2 boxes, 2 classes"
    assert export.notes == ["1 crowd regions (iscrowd) left out: YOLO labels cannot mark ignore regions",
                            "1 boxes overran their image and were clipped to it",
                            "1 boxes with no area inside their image left out (annotation ids 4)"]
    coco_to_yolo(path, tmp_path / "yolo")  # writing again into the same folder is fine
    write_text(tmp_path / "yolo" / "old.txt", "0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ConversionError, match=r"already holds old.txt that this conversion would not write"):
        coco_to_yolo(path, tmp_path / "yolo")


def test_coco_to_yolo_refusals(tmp_path):
    cats = [{"id": 1, "name": "a"}]
    clash = [{"id": 1, "file_name": "x.jpg", "width": 5, "height": 5},
             {"id": 2, "file_name": "x.png", "width": 5, "height": 5}]
    with pytest.raises(ConversionError, match=r"image id 2 \(x.png\) and image id 1 would both be written to x.txt"):
        coco_to_yolo(coco_file(tmp_path, clash, [], cats), tmp_path / "out1")
    outside = [{"id": 1, "file_name": "../x.jpg", "width": 5, "height": 5}]
    with pytest.raises(ConversionError, match=r"image id 1 has the file_name '../x.jpg'"):
        coco_to_yolo(coco_file(tmp_path, outside, [], cats), tmp_path / "out2")
    path = coco_file(tmp_path, [{"id": 3, "file_name": "x.png", "width": 6, "height": 5}], [], cats)
    save_image(tmp_path / "img" / "x.png", 5, 6)
    with pytest.raises(ConversionError, match=r"image id 3 is 6x5 in the JSON but .*x.png is 5x6"):
        coco_to_yolo(path, tmp_path / "out3", images=tmp_path / "img")
    duplicate = [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]
    with pytest.raises(ConversionError, match=r"class name 'a' appears twice"):
        coco_to_yolo(coco_file(tmp_path, [], [], duplicate), tmp_path / "out4")
