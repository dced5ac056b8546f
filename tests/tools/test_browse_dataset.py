"""tools/browse_dataset.py: training samples drawn after the transforms, boxes where the targets say."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.data.synthetic import ensure_synthetic_coco
from detector.visualization import class_color

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"
SYNTHETIC = dict(num_train=8, num_val=4, image_size=64, num_classes=6, min_object_size=12, max_object_size=40,
                 max_objects=2, seed=0)
MIN_SIZE = 96  # the shorter side after the resize (upscaled from ~50-64 px)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browse")
    paths = ensure_synthetic_coco(str(tmp / "syn"), **SYNTHETIC)
    opts = [f"data.train.ann_file={paths['train_ann_file']}", f"data.train.img_dir={paths['train_img_dir']}",
            f"data.val.ann_file={paths['val_ann_file']}", f"data.val.img_dir={paths['val_img_dir']}",
            "data.synthetic.enabled=false", f"data.min_size=[{MIN_SIZE}]", "data.max_size=400",
            f"data.test_min_size={MIN_SIZE}", "data.test_max_size=400", "data.num_workers=0", "data.batch_size=2",
            "data.test_batch_size=2"]
    spec = importlib.util.spec_from_file_location("focaldet_tool_browse_dataset", ROOT / "tools" / "browse_dataset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return {"tmp": tmp, "opts": opts, "tool": tool, "gt": json.loads(Path(paths["train_ann_file"]).read_text())}


def outline(height, width, x1, y1, x2, y2) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y1, x1:x2 + 1] = mask[y2, x1:x2 + 1] = True
    mask[y1:y2 + 1, x1] = mask[y1:y2 + 1, x2] = True
    return mask


def expected_boxes(gt: dict, image_id: int, new_h: int, new_w: int, flip: bool) -> list[tuple[int, list[int]]]:
    """(label, drawn pixel box) of each annotation: scaled by the resize, mirrored by the flip, floored."""
    image = next(i for i in gt["images"] if i["id"] == image_id)
    sx, sy = new_w / image["width"], new_h / image["height"]
    cat_ids = sorted(c["id"] for c in gt["categories"])
    boxes = []
    for ann in (a for a in gt["annotations"] if a["image_id"] == image_id):
        x, y, w, h = ann["bbox"]
        x1, x2 = x * sx, (x + w) * sx
        if flip:
            x1, x2 = new_w - x2, new_w - x1
        pixel_box = [int(np.floor(min(max(v, 0), limit - 1)))
                     for v, limit in ((x1, new_w), (y * sy, new_h), (x2, new_w), ((y + h) * sy, new_h))]
        boxes.append((cat_ids.index(ann["category_id"]), pixel_box))
    return boxes


def test_forced_flip_boxes_match_the_transformed_targets(setup):
    out = setup["tmp"] / "train"
    code = setup["tool"].main([str(CONFIG), "--out-dir", str(out), "--max-images", "5", "--opts", *setup["opts"],
                               "data.flip_prob=1.0"])
    assert code == 0
    files = sorted(out.iterdir())
    assert len(files) == 5
    mirrored_checked = 0
    for path in files:
        assert path.stat().st_size > 0
        image_id, new_w, new_h = map(int, re.fullmatch(r"(\d+)_(\d+)x(\d+)\.png", path.name).groups())
        info = next(i for i in setup["gt"]["images"] if i["id"] == image_id)
        scale = MIN_SIZE / min(info["height"], info["width"])  # the resize, computed independently
        assert (new_h, new_w) == (round(info["height"] * scale), round(info["width"] * scale))
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert pixels.shape[1] == new_w and pixels.shape[0] > new_h
        drawn = pixels[pixels.shape[0] - new_h:]  # below the caption
        for (label, flipped), (_, unflipped) in zip(expected_boxes(setup["gt"], image_id, new_h, new_w, True),
                                                    expected_boxes(setup["gt"], image_id, new_h, new_w, False)):
            colored = (drawn == np.array(class_color(label), dtype=np.uint8)).all(axis=-1)  # (h, w)
            on_flipped = colored[outline(new_h, new_w, *flipped)].mean()
            assert on_flipped > 0.8, (path.name, flipped, on_flipped)  # other boxes' labels may cover a bit
            if abs(flipped[0] - unflipped[0]) > 4:  # not symmetric about the centre: the unflipped place is empty
                x1, y1, x2, y2 = unflipped  # its left and right edges (the top and bottom may cross the box)
                assert colored[y1:y2 + 1, x1].mean() < 0.5 and colored[y1:y2 + 1, x2].mean() < 0.5
                mirrored_checked += 1
    assert mirrored_checked >= 2


def test_val_split_and_bad_input(setup, capsys):
    out = setup["tmp"] / "val"
    assert setup["tool"].main([str(CONFIG), "--out-dir", str(out), "--split", "val", "--opts", *setup["opts"]]) == 0
    assert len(list(out.glob("*.png"))) == 4  # every val image once (max-images 16 > 4)
    missing = setup["tmp"] / "nowhere.json"
    assert setup["tool"].main([str(CONFIG), "--out-dir", str(out), "--opts", *setup["opts"],
                               f"data.train.ann_file={missing}"]) == 1
    assert f"error: annotation file not found: {missing}" in capsys.readouterr().err


def test_augmentation_is_what_it_draws(setup):
    """data.augment shows: large-scale jitter to 72 x 88 gives every drawn training image that size."""
    out = setup["tmp"] / "jitter"
    assert setup["tool"].main([str(CONFIG), "--out-dir", str(out), "--max-images", "4", "--opts", *setup["opts"],
                               "data.augment.scale_jitter.prob=1", "data.augment.scale_jitter.size=[72,88]",
                               "data.augment.photometric.prob=1"]) == 0
    names = sorted(path.name for path in out.glob("*.png"))
    assert len(names) == 4 and all(name.endswith("_88x72.png") for name in names), names
