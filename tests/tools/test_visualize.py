"""tools/visualize.py on a tiny synthetic val set: a random model's checkpoint, a results file, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.config import load_config
from detector.data.synthetic import ensure_synthetic_coco
from detector.models import build_model
from detector.runtime.checkpoint import save_checkpoint
from detector.visualization import class_color
from detector.visualization.draw import CAPTION_HEIGHT, PANEL_GAP

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"
SYNTHETIC = dict(num_train=8, num_val=4, image_size=64, num_classes=6, min_object_size=12, max_object_size=40,
                 max_objects=2, seed=0)


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"focaldet_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("visualize")
    paths = ensure_synthetic_coco(str(tmp / "syn"), **SYNTHETIC)
    opts = [f"data.train.ann_file={paths['train_ann_file']}", f"data.train.img_dir={paths['train_img_dir']}",
            f"data.val.ann_file={paths['val_ann_file']}", f"data.val.img_dir={paths['val_img_dir']}",
            "data.synthetic.enabled=false", "data.test_min_size=64", "data.test_max_size=64",
            "data.num_workers=0", "data.test_batch_size=2", "model.head.num_convs=1", "model.head.feat_channels=32",
            "model.neck.out_channels=32", "runtime.amp='off'", "runtime.channels_last=false",
            "model.test.score_thr=0.0"]  # a random model: keep every box so that some are drawn
    checkpoint = tmp / "random.pt"
    save_checkpoint(checkpoint, {"model": build_model(load_config(CONFIG, opts)).state_dict(), "iteration": 0})
    gt = json.loads(Path(paths["val_ann_file"]).read_text())
    return {"tmp": tmp, "opts": opts, "checkpoint": checkpoint, "gt": gt, "tool": load_tool("visualize")}


def run(setup, *args) -> int:
    return setup["tool"].main([str(CONFIG), *map(str, args), "--opts", *setup["opts"]])


def read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0, path
    return np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3)


def test_checkpoint_writes_one_png_per_image(setup):
    out = setup["tmp"] / "from_checkpoint"
    assert run(setup, setup["checkpoint"], "--out-dir", out, "--score-thr", "0") == 0
    ids = [image["id"] for image in setup["gt"]["images"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.png" for i in ids)
    for image in setup["gt"]["images"]:
        pixels = read_png(out / f"{image['id']}.png")
        assert pixels.shape[1] == 2 * image["width"] + PANEL_GAP
        assert pixels.shape[0] > image["height"] + CAPTION_HEIGHT - 1


def test_results_file_boxes_land_on_the_ground_truth_edges(setup):
    gt = setup["gt"]
    cat_ids = sorted(c["id"] for c in gt["categories"])
    image = gt["images"][-1]
    anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
    box = [20.0, 18.0, 30.0, 25.0]  # xywh in original pixels, above the threshold; a second one below it
    results = [{"image_id": image["id"], "category_id": cat_ids[1], "bbox": box, "score": 0.9},
               {"image_id": image["id"], "category_id": cat_ids[-1], "bbox": [1, 1, 30, 30], "score": 0.1}]
    path = setup["tmp"] / "one.json"
    path.write_text(json.dumps(results))
    out = setup["tmp"] / "from_results"
    assert run(setup, "--results", path, "--out-dir", out, "--image-ids", image["id"], "--score-thr", "0.5") == 0
    assert [p.name for p in out.iterdir()] == [f"{image['id']}.png"]
    pixels = read_png(out / f"{image['id']}.png")
    width = image["width"]
    caption = pixels.shape[0] - image["height"]
    left, right = pixels[caption:, :width], pixels[caption:, width + PANEL_GAP:]
    colored = (right == np.array(class_color(1), dtype=np.uint8)).all(axis=-1)  # (H, W)
    assert colored[18:44, 20].all() and colored[18:44, 50].all()  # left and right edges: x = 20, 20 + 30
    assert colored[43, 20:51].all() and colored[18, 20:51].all()  # bottom and top edges: y = 18 + 25
    assert not colored[44:].any() and not colored[18:, 51:].any() and not colored[18:, :20].any()
    assert not (right == np.array(class_color(len(cat_ids) - 1), dtype=np.uint8)).all(axis=-1).any()  # < thr
    for a in anns:  # every ground-truth class is drawn on the left
        assert (left == np.array(class_color(cat_ids.index(a["category_id"])), dtype=np.uint8)).all(axis=-1).any()


def test_bad_input_is_one_clear_error(setup, capsys):
    tmp = setup["tmp"]
    empty = tmp / "empty.json"
    empty.write_text("[]")
    assert run(setup, "--results", empty, "--out-dir", tmp / "x") == 1
    assert "holds no detections" in capsys.readouterr().err
    assert run(setup, "--results", tmp / "missing.json", "--out-dir", tmp / "x") == 1
    assert "missing.json" in capsys.readouterr().err
    assert run(setup, tmp / "missing.pt", "--out-dir", tmp / "x") == 1
    assert "missing.pt" in capsys.readouterr().err
    assert run(setup, setup["checkpoint"], "--out-dir", tmp / "x", "--image-ids", "123456") == 1
    err = capsys.readouterr().err
    assert "error: image id(s) 123456 not in" in err and "instances_val.json" in err
    assert not (tmp / "x").exists()
