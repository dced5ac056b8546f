"""TensorBoard images and PR curves: the logger's methods read back, and a 2-iteration run with evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from detector.config import load_config
from detector.data.synthetic import ensure_synthetic_coco
from detector.engine.trainer import Trainer, train
from detector.runtime.metrics_log import MetricsLogger
from detector.visualization.draw import PANEL_GAP

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = dict(num_train=8, num_val=4, image_size=64, num_classes=6, min_object_size=12, max_object_size=40,
                 max_objects=2, seed=0)


def read_events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def pr_curve_tags(accumulator: EventAccumulator) -> list[str]:
    return [tag for tag in accumulator.Tags()["tensors"]
            if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "pr_curves"]


def test_logger_writes_images_and_pr_curves(tmp_path):
    image = torch.zeros(3, 5, 7, dtype=torch.uint8)
    image[0, 1, 2] = 200
    precision = np.linspace(1.0, 0.25, 101)  # a falling curve at recall 0, .01, ..., 1
    with MetricsLogger(tmp_path) as log:
        assert log.has_tensorboard
        log.log_images(3, {"image_1": image})
        log.log_pr_curves(3, {"circle": precision.tolist(), "absent": [-1.0] * 101, "none": None})
    events = read_events(tmp_path / "tb")
    (record,) = events.Images("val_images/image_1")
    assert (record.step, record.width, record.height) == (3, 7, 5)
    assert pr_curve_tags(events) == ["val_pr/circle"]  # classes without ground truth are skipped
    (event,) = events.Tensors("val_pr/circle")
    data = tensor_util.make_ndarray(event.tensor_proto)  # (6, 101): TP, FP, TN, FN, precision, recall
    assert event.step == 3 and data.shape == (6, 101)
    np.testing.assert_allclose(data[4], precision, rtol=1e-6)
    np.testing.assert_allclose(data[5], np.linspace(0.0, 1.0, 101), rtol=1e-6)


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "off", enabled=False)
    assert not log.has_tensorboard
    log.log_images(1, {"x": torch.zeros(3, 2, 2, dtype=torch.uint8)})
    log.log_pr_curves(1, {"x": [1.0, 0.5]})
    assert not (tmp_path / "off").exists()


def tiny_config(tmp_path: Path, images: int, pr_curves: bool):
    paths = ensure_synthetic_coco(str(tmp_path / "syn"), **SYNTHETIC)
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        f"data.train.ann_file={paths['train_ann_file']}", f"data.train.img_dir={paths['train_img_dir']}",
        f"data.val.ann_file={paths['val_ann_file']}", f"data.val.img_dir={paths['val_img_dir']}",
        "data.synthetic.enabled=false", "data.min_size=[64]", "data.max_size=64", "data.test_min_size=64",
        "data.test_max_size=64", "data.num_workers=0", "data.batch_size=2", "data.test_batch_size=4",
        "model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32", "runtime.amp='off'",
        "runtime.channels_last=false", "model.test.score_thr=0.0", "schedule.max_iters=2", "schedule.warmup_iters=1",
        f"evaluation.tensorboard_images={images}", f"evaluation.tensorboard_pr_curves={str(pr_curves).lower()}"])
    return cfg, json.loads(Path(paths["val_ann_file"]).read_text())


def test_training_evaluation_logs_images_and_pr_curves(tmp_path):
    cfg, gt = tiny_config(tmp_path, images=2, pr_curves=True)
    metrics = train(cfg, tmp_path / "run", progress=False)  # 2 iterations, then the evaluation
    assert "AP" in metrics and "images" not in metrics and "pr_curves" not in metrics
    events = read_events(tmp_path / "run" / "tb")
    first = gt["images"][:2]
    assert sorted(events.Tags()["images"]) == sorted(f"val_images/image_{image['id']}" for image in first)
    for image in first:
        (record,) = events.Images(f"val_images/image_{image['id']}")
        assert record.step == 2 and record.width == 2 * image["width"] + PANEL_GAP  # two panels side by side
    # One curve per class with val ground truth and detections (a random model's boxes: at least one class).
    names = {c["id"]: c["name"] for c in gt["categories"]}
    tags = pr_curve_tags(events)
    assert tags and set(tags) <= {f"val_pr/{names[a['category_id']]}" for a in gt["annotations"]}
    for tag in tags:
        (event,) = events.Tensors(tag)
        precision = tensor_util.make_ndarray(event.tensor_proto)[4]  # (101,)
        assert event.step == 2 and precision.shape == (101,) and ((precision >= 0) & (precision <= 1)).all()
    assert "val/AP" in events.Tags()["scalars"]


def test_evaluation_without_images_and_curves(tmp_path):
    cfg, _ = tiny_config(tmp_path, images=0, pr_curves=False)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    metrics = trainer.evaluate()  # evaluation only: no training step needed
    trainer.close()
    assert "AP" in metrics and "images" not in metrics and "pr_curves" not in metrics
    events = read_events(tmp_path / "run" / "tb")
    assert events.Tags()["images"] == [] and pr_curve_tags(events) == []
    assert "val/AP" in events.Tags()["scalars"]
