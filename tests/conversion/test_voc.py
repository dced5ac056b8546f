"""Pascal VOC XML -> COCO on hand-made files: the 1-based inclusive corner rule, difficult boxes, sizes from
image headers (EXIF orientation), layouts (devkit, split lists, nested folders), and every malformed case
stopping with one error that names the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.conversion.dataset_files import ConversionError
from detector.conversion.voc import voc_to_coco

from .conftest import save_image, voc_xml, write_text

# (file name, stored width, height, objects); expected COCO boxes below, by the documented rule
# x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1, h = ymax - ymin + 1, worked out by hand.
OBJECTS_A = [
    {"name": "dog", "box": (1, 1, 48, 32)},  # the whole 48x32 image, touching every border
    {"name": "cat", "box": (7, 9, 7, 9)},  # one pixel
    {"name": "cat", "box": (10, 5, 20, 15), "difficult": 1},
    {"name": "person", "box": (40, 20, 48, 32), "truncated": 1, "difficult": 0},
]
EXPECTED_A = [[0.0, 0.0, 48.0, 32.0], [6.0, 8.0, 1.0, 1.0], [9.0, 4.0, 11.0, 11.0], [39.0, 19.0, 9.0, 13.0]]


@pytest.fixture
def devkit(tmp_path):
    """A VOC devkit: Annotations/ + JPEGImages/, with a nested non-ASCII image without <size> and an image
    without objects."""
    root = tmp_path / "VOC2007"
    save_image(root / "JPEGImages" / "000001.jpg", 48, 32)
    write_text(root / "Annotations" / "000001.xml", voc_xml("000001.jpg", (48, 32), OBJECTS_A))
    save_image(root / "JPEGImages" / "sub" / "dir" / "ünï 猫.png", 20, 10)
    write_text(root / "Annotations" / "sub" / "dir" / "ünï 猫.xml",
               voc_xml("ünï 猫.png", None, [{"name": "bird", "box": (2, 2, 5, 5)}]))
    save_image(root / "JPEGImages" / "empty.jpg", 16, 12)
    write_text(root / "Annotations" / "empty.xml", voc_xml("empty.jpg", (16, 12), []))
    return root


def boxes_of(dataset: dict, file_name: str) -> list[dict]:
    image_id = next(image["id"] for image in dataset["images"] if image["file_name"] == file_name)
    return [ann for ann in dataset["annotations"] if ann["image_id"] == image_id]


def test_devkit_folder_to_coco(devkit):
    result = voc_to_coco(devkit / "Annotations")
    dataset = result.dataset
    assert result.images_root == devkit / "JPEGImages"  # the default beside Annotations/
    # Images in sorted label-path order; the size of the nested one comes from its PNG header.
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in dataset["images"]] == [
        (1, "000001.jpg", 48, 32), (2, "empty.jpg", 16, 12), (3, "sub/dir/ünï 猫.png", 20, 10)]
    # Without a class list: the names found, sorted; ids 1..K.
    assert dataset["categories"] == [{"id": 1, "name": "bird"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "dog"},
                                     {"id": 4, "name": "person"}]
    anns = boxes_of(dataset, "000001.jpg")
    assert [ann["bbox"] for ann in anns] == EXPECTED_A
    assert [ann["category_id"] for ann in anns] == [3, 2, 2, 4]
    assert [ann["iscrowd"] for ann in anns] == [0, 0, 1, 0]  # the difficult box is an ignore region
    assert [(ann["difficult"], ann["truncated"]) for ann in anns] == [(0, 0), (0, 0), (1, 0), (0, 1)]
    assert [ann["area"] for ann in anns] == [48.0 * 32.0, 1.0, 121.0, 117.0]
    assert boxes_of(dataset, "empty.jpg") == []  # kept, without boxes
    assert [ann["bbox"] for ann in boxes_of(dataset, "sub/dir/ünï 猫.png")] == [[1.0, 1.0, 4.0, 4.0]]
    assert [ann["id"] for ann in dataset["annotations"]] == list(range(1, 6))
    assert "3 images (1 without boxes), 4 boxes, 1 ignore regions" in result.summary


def test_corner_rule_inverts_exactly(devkit):
    """xmin = x + 1, ymin = y + 1, xmax = x + w, ymax = y + h gives back the XML's integers."""
    dataset = voc_to_coco(devkit / "Annotations").dataset
    corners = [(x + 1, y + 1, x + w, y + h) for x, y, w, h in (a["bbox"] for a in boxes_of(dataset, "000001.jpg"))]
    assert corners == [obj["box"] for obj in OBJECTS_A]


def test_keep_difficult_and_class_list_order(devkit, tmp_path):
    names = ["person", "dog", "cat", "bird", "horse"]  # a listed class without boxes keeps its id
    dataset = voc_to_coco(devkit / "Annotations", class_names=names, keep_difficult=True).dataset
    assert [c["name"] for c in dataset["categories"]] == names
    assert [c["id"] for c in dataset["categories"]] == [1, 2, 3, 4, 5]
    anns = boxes_of(dataset, "000001.jpg")
    assert [ann["category_id"] for ann in anns] == [2, 3, 3, 1]
    assert [ann["iscrowd"] for ann in anns] == [0, 0, 0, 0]
    assert anns[2]["difficult"] == 1


def test_split_list_single_file_and_labels_beside_images(devkit, tmp_path):
    write_text(devkit / "ImageSets" / "Main" / "val.txt", "empty\n\n000001\n")
    result = voc_to_coco(devkit / "ImageSets" / "Main" / "val.txt")
    assert [i["file_name"] for i in result.dataset["images"]] == ["empty.jpg", "000001.jpg"]  # list order
    assert result.images_root.resolve() == (devkit / "JPEGImages").resolve()
    single = voc_to_coco(devkit / "Annotations" / "000001.xml").dataset
    assert [i["file_name"] for i in single["images"]] == ["000001.jpg"]
    # LabelImg style: XML beside the image, no <filename>: the image with the XML's stem.
    save_image(tmp_path / "photos" / "IMG 1.jpeg", 10, 8)
    write_text(tmp_path / "photos" / "IMG 1.xml", voc_xml(None, None, [{"name": "x", "box": (1, 1, 10, 8)}]))
    result = voc_to_coco(tmp_path / "photos")
    assert result.dataset["images"] == [{"id": 1, "file_name": "IMG 1.jpeg", "width": 10, "height": 8}]
    assert result.dataset["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 8.0]


def test_size_from_header_applies_exif_orientation(tmp_path):
    """A JPEG stored 30 wide and 20 high with orientation 6 (a quarter turn) is displayed 20 x 30."""
    save_image(tmp_path / "phone.jpg", 30, 20, orientation=6)
    write_text(tmp_path / "phone.xml", voc_xml("phone.jpg", None, [{"name": "a", "box": (1, 1, 20, 30)}]))
    image = voc_to_coco(tmp_path).dataset["images"][0]
    assert (image["width"], image["height"]) == (20, 30)
    # The stored pixel grid is 30 x 20, which the same box overruns.
    with pytest.raises(ConversionError, match="outside the 30x20 image"):
        voc_to_coco(tmp_path, exif_orientation=False)


def test_one_pixel_overrun_is_clipped_and_counted(tmp_path):
    save_image(tmp_path / "a.png", 10, 10)
    write_text(tmp_path / "a.xml", voc_xml("a.png", (10, 10), [{"name": "a", "box": (0, 0, 11, 10)}]))
    result = voc_to_coco(tmp_path)
    assert result.dataset["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 10.0]
    assert any("1 boxes overran their image" in note for note in result.notes)


def bad_case(tmp_path: Path, xml: str, image: str | None = "a.png") -> Path:
    if image is not None:
        save_image(tmp_path / image, 40, 30)
    return write_text(tmp_path / "a.xml", xml)


BAD_XML = [
    # (name, XML text, the line the error must name, words it must contain)
    ("xmax_below_xmin", voc_xml("a.png", (40, 30), [{"name": "a", "box": (20, 5, 10, 9)}]), 7, "xmax < xmin"),
    ("non_numeric", voc_xml("a.png", (40, 30), [{"name": "a", "box": (1, 1, "ten", 9)}]), 10, "not a number"),
    ("outside_image", voc_xml("a.png", (40, 30), [{"name": "a", "box": (1, 1, 45, 9)}]), 7, "outside the 40x30"),
    ("no_bndbox", "<annotation>\n<filename>a.png</filename>\n<object>\n<name>a</name>\n</object>\n</annotation>",
     3, "has no <bndbox>"),
    ("no_name", "<annotation>\n<object>\n<bndbox><xmin>1</xmin></bndbox>\n</object>\n</annotation>", 2,
     "has no <name>"),
    ("bad_flag", voc_xml("a.png", (40, 30), [{"name": "a", "box": (1, 1, 4, 4), "difficult": "maybe"}]), 7,
     "expected 0 or 1"),
    ("bad_size", voc_xml("a.png", (40.5, 30), []), 4, "positive whole pixel counts"),
    ("not_well_formed", "<annotation>\n<filename>a.png</filename>\n<object>\n</annotation>\n", 4,
     "not well-formed XML"),
    ("wrong_root", "<?xml version='1.0'?>\n<doc/>\n", 2, "expected <annotation>"),
    ("entity_expansion", "<?xml version='1.0'?>\n<!DOCTYPE a [\n<!ENTITY lol 'lol'>\n"
     "<!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;'>\n]>\n<annotation>&lol2;</annotation>\n", 3, "refused"),
]


@pytest.mark.parametrize("xml,line,words", [case[1:] for case in BAD_XML], ids=[case[0] for case in BAD_XML])
def test_malformed_xml_names_file_and_line(tmp_path, xml, line, words):
    path = bad_case(tmp_path, xml)
    with pytest.raises(ConversionError) as err:
        voc_to_coco(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message and "\n" not in message


def test_unknown_class_and_missing_image_name_the_line(tmp_path):
    path = bad_case(tmp_path, voc_xml("a.png", (40, 30), [{"name": "a", "box": (1, 1, 4, 4)},
                                                          {"name": "zebra", "box": (1, 1, 4, 4)}]))
    with pytest.raises(ConversionError, match=rf"^{path}:15: class 'zebra' is not in the class list"):
        voc_to_coco(tmp_path, class_names=["a", "b"])
    # No <size> and no image: the error names the <filename> line and says both are missing.
    path = bad_case(tmp_path, voc_xml("gone.png", None, [{"name": "a", "box": (1, 1, 4, 4)}]), image=None)
    with pytest.raises(ConversionError, match=rf"^{path}:3: image .*gone.png not found; the file has no <size>"):
        voc_to_coco(tmp_path)
    # With a <size> the image must exist all the same.
    write_text(path, voc_xml("gone.png", (40, 30), []))
    with pytest.raises(ConversionError, match=rf"^{path}:3: image .*gone.png not found$"):
        voc_to_coco(tmp_path, class_names=["a"])


def test_split_list_errors_name_the_list_line(devkit):
    split = write_text(devkit / "ImageSets" / "Main" / "train.txt", "000001\nmissing_id\n")
    with pytest.raises(ConversionError, match=rf"^{split}:2: no annotation file .*missing_id.xml"):
        voc_to_coco(split)
    write_text(split, "000001\nempty\n000001\n")
    with pytest.raises(ConversionError, match=rf"^{split}:3: image id '000001' is listed again \(first on line 1\)"):
        voc_to_coco(split)


def test_two_files_naming_one_image(tmp_path):
    save_image(tmp_path / "a.png", 10, 10)
    write_text(tmp_path / "a.xml", voc_xml("a.png", (10, 10), []))
    copy = write_text(tmp_path / "b.xml", voc_xml("a.png", (10, 10), []))
    with pytest.raises(ConversionError, match=rf"^{copy}:3: image a.png is named by {tmp_path / 'a.xml'} too$"):
        voc_to_coco(tmp_path, class_names=["x"])
