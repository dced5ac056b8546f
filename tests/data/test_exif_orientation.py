"""The datasets apply a JPEG's EXIF orientation (data.exif_orientation): phone photos annotated as displayed line up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_image, read_file

from detector.config import load_config
from detector.data.build import build_dataset
from detector.data.coco import CocoDetection
from detector.data.detection_dataset import BadImageError

# The reference decodes call torchvision.io, deprecated in favour of TorchCodec since torchvision 0.29.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
# The picture as a viewer shows it: 48 x 80 px (h x w), dark, with one bright object at x 50-70, y 8-40.
DISPLAYED_HEIGHT, DISPLAYED_WIDTH = 48, 80
OBJECT_BOX = [50, 8, 70, 40]  # x1, y1, x2, y2 in displayed pixels


def displayed_picture() -> np.ndarray:
    pixels = np.full((DISPLAYED_HEIGHT, DISPLAYED_WIDTH, 3), 20, np.uint8)
    x1, y1, x2, y2 = OBJECT_BOX
    pixels[y1:y2, x1:x2] = 235
    return pixels


def write_phone_jpeg(path: Path, orientation: int | None) -> None:
    """Store the displayed picture as a camera does: orientation 6 keeps the sensor's grid, which a viewer turns
    90 degrees clockwise to show (so the stored grid is the picture turned 90 degrees counter-clockwise)."""
    picture = Image.fromarray(displayed_picture())
    if orientation is None:
        picture.save(path, quality=95)
        return
    assert orientation == 6
    exif = Image.Exif()
    exif[0x0112] = orientation
    picture.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)  # ROTATE_90: counter-clockwise


def write_coco(root: Path, file_name: str, height: int, width: int) -> str:
    x1, y1, x2, y2 = OBJECT_BOX
    ann_file = root / f"{Path(file_name).stem}.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": file_name, "height": height, "width": width}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "object"}]}))
    return str(ann_file)


def test_the_stored_file_really_is_turned(tmp_path):
    write_phone_jpeg(tmp_path / "phone.jpg", orientation=6)
    with Image.open(tmp_path / "phone.jpg") as stored:
        assert stored.size == (DISPLAYED_HEIGHT, DISPLAYED_WIDTH)  # PIL: (width, height) of the stored grid
        assert stored.getexif()[0x0112] == 6


def test_an_orientation_6_jpeg_annotated_as_displayed_lines_up(tmp_path):
    write_phone_jpeg(tmp_path / "phone.jpg", orientation=6)
    ann_file = write_coco(tmp_path, "phone.jpg", DISPLAYED_HEIGHT, DISPLAYED_WIDTH)
    image, target = CocoDetection(ann_file, str(tmp_path))[0]
    assert image.shape == (3, DISPLAYED_HEIGHT, DISPLAYED_WIDTH)
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0].tolist())
    assert [x1, y1, x2, y2] == OBJECT_BOX
    gray = image.float().mean(0)  # (H, W)
    inside = gray[y1 + 2:y2 - 2, x1 + 2:x2 - 2]
    outside = torch.cat([gray[:, : x1 - 2].flatten(), gray[:, x2 + 2:].flatten(), gray[: y1 - 2].flatten()])
    assert inside.min() > 200 and outside.max() < 60  # the bright object is exactly under its box (JPEG noise aside)
    expected = torch.from_numpy(displayed_picture()).permute(2, 0, 1).float()
    assert (image.float() - expected).abs().mean() < 3  # the whole picture, as displayed


def test_exif_orientation_false_keeps_the_stored_grid_and_the_error_says_why(tmp_path):
    write_phone_jpeg(tmp_path / "phone.jpg", orientation=6)
    stored_ann = write_coco(tmp_path, "phone.jpg", DISPLAYED_WIDTH, DISPLAYED_HEIGHT)  # annotated on the raw grid
    image, _ = CocoDetection(stored_ann, str(tmp_path), exif_orientation=False)[0]
    assert image.shape == (3, DISPLAYED_WIDTH, DISPLAYED_HEIGHT)
    assert torch.equal(image, decode_image(read_file(str(tmp_path / "phone.jpg")), apply_exif_orientation=False))
    displayed_ann = write_coco(tmp_path, "phone.jpg", DISPLAYED_HEIGHT, DISPLAYED_WIDTH)
    with pytest.raises(BadImageError) as info:
        CocoDetection(displayed_ann, str(tmp_path), exif_orientation=False)[0]
    message = str(info.value)
    assert message.startswith(f"image {tmp_path / 'phone.jpg'} (image id 1) decodes to size (80, 48) but its "
                              "annotation says (height, width) = (48, 80); the file has EXIF orientation 6, ignored "
                              "(data.exif_orientation: false): set data.exif_orientation: true")
    assert "\n" not in message


def test_a_mismatch_with_orientation_applied_mentions_exif(tmp_path):
    write_phone_jpeg(tmp_path / "phone.jpg", orientation=6)
    stored_ann = write_coco(tmp_path, "phone.jpg", DISPLAYED_WIDTH, DISPLAYED_HEIGHT)
    with pytest.raises(BadImageError) as info:
        CocoDetection(stored_ann, str(tmp_path))[0]
    assert str(info.value).endswith(
        "decodes to size (48, 80) but its annotation says (height, width) = (80, 48); the file has EXIF orientation "
        "6, applied when reading (data.exif_orientation: true), which swaps height and width: annotate the image as "
        "viewers show it, or set data.exif_orientation: false if the annotation follows the stored pixel grid")


def test_a_mismatch_without_a_tag_says_nothing_of_exif(tmp_path):
    write_phone_jpeg(tmp_path / "plain.jpg", orientation=None)
    ann_file = write_coco(tmp_path, "plain.jpg", DISPLAYED_HEIGHT + 1, DISPLAYED_WIDTH)
    with pytest.raises(BadImageError) as info:
        CocoDetection(ann_file, str(tmp_path))[0]
    assert str(info.value).endswith("annotation says (height, width) = (49, 80)")


@pytest.mark.parametrize("name", ["plain.jpg", "plain.png"])
def test_images_without_exif_read_byte_identical_either_way(tmp_path, name):
    # COCO's and LVIS's images carry no orientation tag: their tensors must not change with the setting.
    path = tmp_path / name
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(path)
    ann_file = write_coco(tmp_path, name, 37, 53)
    applied = CocoDetection(ann_file, str(tmp_path)).load_image(0)
    raw = CocoDetection(ann_file, str(tmp_path), exif_orientation=False).load_image(0)
    reference = decode_image(read_file(str(path)))  # torchvision's own decode, no orientation handling asked
    assert applied.dtype == raw.dtype == torch.uint8
    assert torch.equal(applied, raw) and torch.equal(applied, reference)


def test_the_config_key_reaches_the_datasets(tmp_path):
    write_phone_jpeg(tmp_path / "phone.jpg", orientation=6)
    ann_file = write_coco(tmp_path, "phone.jpg", DISPLAYED_HEIGHT, DISPLAYED_WIDTH)
    opts = [f"data.train.ann_file={ann_file}", f"data.train.img_dir={tmp_path}", f"data.val.ann_file={ann_file}",
            f"data.val.img_dir={tmp_path}", "model.num_classes=auto"]
    assert load_config(QUICKSTART, opts).data.exif_orientation is True  # on by default
    cfg = load_config(QUICKSTART, [*opts, "data.exif_orientation=false"])
    assert [build_dataset(cfg, split).exif_orientation for split in ("train", "val")] == [False, False]
