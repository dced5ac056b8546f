"""Every figure command writes a PNG on a tiny model (ResNet-18, 64 px images) and a tiny dataset.

The tools' ``main(argv)`` run in-process (one Python start for all of them); checkpoints are randomly
initialised models saved with detector.runtime.checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from detector.config import load_config
from detector.data.synthetic import ensure_synthetic_coco
from detector.models import build_model
from detector.runtime.checkpoint import save_checkpoint
from detector.runtime.metrics_log import MetricsLogger

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = dict(num_train=4, num_val=4, image_size=64, num_classes=6, min_object_size=12, max_object_size=40,
                 max_objects=3, seed=0)
TINY_MODEL = ["model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32",
              "runtime.amp='off'", "runtime.channels_last=false", "runtime.device=cpu"]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"focaldet_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f"{path}: not a non-empty PNG"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic COCO-format data, overrides that use it, and random-init RetinaNet and GFL checkpoints."""
    tmp = tmp_path_factory.mktemp("figures")
    paths = ensure_synthetic_coco(str(tmp / "syn"), **SYNTHETIC)
    opts = [f"data.synthetic.root={paths['root']}", *(f"data.synthetic.{k}={v}" for k, v in SYNTHETIC.items()),
            f"data.train.ann_file={paths['train_ann_file']}", f"data.train.img_dir={paths['train_img_dir']}",
            f"data.val.ann_file={paths['val_ann_file']}", f"data.val.img_dir={paths['val_img_dir']}",
            "data.min_size=[64]", "data.max_size=64", "data.test_min_size=64", "data.test_max_size=64",
            "data.num_workers=0", "data.batch_size=2", "data.test_batch_size=2", *TINY_MODEL]
    checkpoints = {}
    for name in ("quickstart", "quickstart_gfl"):
        config = ROOT / "configs" / f"{name}.yaml"
        checkpoints[name] = (str(config), str(tmp / f"{name}.pt"))
        save_checkpoint(tmp / f"{name}.pt", {"model": build_model(load_config(config, opts)).state_dict()})
    return {"tmp": tmp, "opts": opts, "checkpoints": checkpoints}


def test_plot_focal_loss(tmp_path, capsys):
    assert load_tool("plot_focal_loss").main(["--out", str(tmp_path / "fig1.png"), "--gammas", "0", "2"]) == 0
    assert_png(tmp_path / "fig1.png")
    assert load_tool("plot_focal_loss").main(["--out", str(tmp_path / "bad.png"), "--gammas", "-1"]) == 2


def test_plot_loss_distribution(tiny, capsys):
    out = tiny["tmp"] / "fig4.png"
    config, checkpoint = tiny["checkpoints"]["quickstart"]
    code = load_tool("plot_loss_distribution").main([config, checkpoint, "--out", str(out), "--max-images", "4",
                                                     "--gammas", "0", "2", "--max-negatives", "5000",
                                                     "--opts", *tiny["opts"]])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    assert_png(out)
    assert re.search(r"4 images: \d+ positives, 5,000 negatives \(a seeded sample of [\d,]+\)", printed)
    rows = [line.split() for line in printed.splitlines() if re.match(r"^\s+[02]\s+\d", line)]
    assert [row[0] for row in rows] == ["0", "2"]
    assert all(0 < float(row[1]) <= 100 and 0 < float(row[3]) <= 100 for row in rows)


def test_plot_sample_ratio_coco_and_lvis(tiny, tmp_path, capsys):
    tool = load_tool("plot_sample_ratio")
    assert tool.main(["configs/quickstart.yaml", "--out", str(tmp_path / "coco.png"), "--opts", *tiny["opts"]]) == 0
    assert_png(tmp_path / "coco.png")
    assert "train: 4 images" in capsys.readouterr().out
    # A hand-made LVIS-format file (no images needed): 3 categories, frequent / common / rare.
    lvis = {"images": [{"id": i, "height": 64, "width": 64, "coco_url": f"http://x/val2017/{i}.jpg",
                        "neg_category_ids": [], "not_exhaustive_category_ids": []} for i in (1, 2)],
            "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "c"},
                           {"id": 3, "name": "c", "frequency": "r"}],
            "annotations": [{"id": k + 1, "image_id": 1 + k % 2, "category_id": cat, "bbox": box, "area": 1.0}
                            for k, (cat, box) in enumerate([(1, [4, 4, 30, 30]), (1, [30, 30, 30, 30]),
                                                            (1, [10, 40, 20, 20]), (2, [2, 2, 50, 40]),
                                                            (2, [40, 2, 20, 20]), (3, [8, 8, 40, 40])])]}
    ann_file = tmp_path / "lvis_train.json"
    ann_file.write_text(json.dumps(lvis))
    lvis_opts = ["data.synthetic.enabled=false", f"data.train.ann_file={ann_file}", "model.num_classes=3",
                 "data.min_size=[64]", "data.max_size=64", *TINY_MODEL]
    assert tool.main(["configs/quickstart_lvis_fl.yaml", "--out", str(tmp_path / "lvis.png"),
                      "--opts", *lvis_opts]) == 0
    printed = capsys.readouterr().out
    assert_png(tmp_path / "lvis.png")
    assert "group r: 1 categories" in printed and "group f: 1 categories" in printed
    assert tool.main(["configs/quickstart_lvis_fl.yaml", "--out", str(tmp_path / "x.png"), "--opts",
                      *lvis_opts[:-len(TINY_MODEL) - 3], "model.num_classes=4"]) == 1  # 3 categories, 4 classes


def test_plot_score_iou_two_models(tiny, capsys):
    out = tiny["tmp"] / "score_iou.png"
    args = [p for pair in tiny["checkpoints"].values() for p in pair]
    # random heads score about the prior (0.01): keep every detection
    code = load_tool("plot_score_iou").main([*args, "--out", str(out), "--names", "RetinaNet", "GFL",
                                             "--max-images", "2", "--opts", *tiny["opts"],
                                             "model.test.score_thr=0.0"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    assert_png(out)
    assert re.search(r"RetinaNet: \d+ detections \(after NMS\) on 2 images, Pearson r.*IoU >= 0.5", printed)
    assert re.search(r"GFL: \d+ detections", printed)


def test_plot_metrics(tmp_path, capsys):
    for name, scale in (("run_a", 1.0), ("run_b", 2.0)):
        with MetricsLogger(tmp_path / name, tensorboard_subdir=None) as log:
            for it in range(10, 60, 10):
                log.log(it, {"loss_cls": scale / it, "loss_box": 0.5 / it, "loss": (scale + 0.5) / it, "lr": 0.01})
            log.log(50, {"AP": 0.1 * scale, "AP50": 0.2}, prefix="val")
    tool = load_tool("plot_metrics")
    assert tool.main([str(tmp_path / "run_a"), str(tmp_path / "run_b" / "metrics.jsonl"), "--out",
                      str(tmp_path / "m.png")]) == 0
    assert_png(tmp_path / "m.png")
    assert "last evaluation AP 0.2000" in capsys.readouterr().out
    assert tool.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "n.png")]) == 1
