"""A training set smaller than one batch trains on incomplete batches, with a warning, instead of stopping."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.config import load_config
from detector.data.build import build_train_loader
from detector.engine.trainer import Trainer

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def write_three_images(root: Path) -> list[str]:
    """3 images (two 48 x 64 landscape, one 64 x 48 portrait), one box each, 2 classes; overrides for batch 8."""
    root.mkdir(parents=True)
    images, annotations = [], []
    for image_id, (height, width) in enumerate([(48, 64), (64, 48), (48, 64)], start=1):
        Image.fromarray(np.full((height, width, 3), 60 * image_id, np.uint8)).save(root / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1 + image_id % 2,
                            "bbox": [4, 4, 30, 30], "area": 900, "iscrowd": 0})
    ann_file = root / "train.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return [f"data.train.ann_file={ann_file}", f"data.train.img_dir={root}", f"data.val.ann_file={ann_file}",
            f"data.val.img_dir={root}", "model.num_classes=auto", "data.batch_size=8", "data.num_workers=0",
            "data.min_size=[64]", "data.max_size=64", "data.test_min_size=64", "data.test_max_size=64"]


def test_three_images_and_batch_eight_give_one_batch_of_three_per_epoch(tmp_path, caplog):
    cfg = load_config(QUICKSTART, write_three_images(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="detector.data.build"):
        loader, sampler = build_train_loader(cfg)
    ann_file = tmp_path / "data" / "train.json"
    assert (f"{ann_file}: 3 training images give no full batch of 8 per process (data.batch_size 8): each step "
            "trains on the 3 images") in caplog.text
    assert sampler.num_batches_per_epoch == 1 and len(loader) == 1
    for epoch in range(3):  # every epoch: one batch holding each image once
        sampler.set_epoch(epoch)
        (batch,) = list(sampler)
        assert sorted(index for index, _ in batch) == [0, 1, 2]
    images, targets = next(iter(loader))
    assert images.shape[0] == 3 and len(targets) == 3


def test_two_processes_each_get_one_incomplete_batch(tmp_path):
    cfg = load_config(QUICKSTART, write_three_images(tmp_path / "data"))
    shards = [build_train_loader(cfg, rank=rank, world_size=2)[1] for rank in (0, 1)]
    batches = [list(sampler) for sampler in shards]
    # 3 images padded to 4 (the head repeated), 2 per rank: one batch of 2 on each rank, every image seen.
    assert [len(b) for b in batches] == [1, 1] and [len(b[0]) for b in batches] == [2, 2]
    assert {index for b in batches for index, _ in b[0]} == {0, 1, 2}


def test_a_full_batch_keeps_drop_last(tmp_path, caplog):
    cfg = load_config(QUICKSTART, write_three_images(tmp_path / "data") + ["data.batch_size=2"])
    with caplog.at_level(logging.WARNING, logger="detector.data.build"):
        _, sampler = build_train_loader(cfg)
    assert sampler.drop_last and sampler.num_batches_per_epoch == 1 and "no full batch" not in caplog.text


def test_three_images_train_with_batch_eight(tmp_path):
    torch.set_num_threads(1)
    opts = write_three_images(tmp_path / "data") + [
        "schedule.iters=4", "schedule.steps=[3]", "schedule.warmup_iters=0", "schedule.max_iters=2",
        "runtime.eval_at_end=false", "runtime.channels_last=false", "runtime.log_interval=1",
        "model.neck.out_channels=32", "model.head.num_convs=1", "model.head.feat_channels=32", "model.head.norm=null"]
    cfg = load_config(QUICKSTART, opts)
    assert not cfg.data.synthetic.enabled and cfg.model.num_classes == 2  # own files: generator off, classes read
    trainer = Trainer(cfg, tmp_path / "work", progress=False)
    trainer.fit()
    logged = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    assert max(row["iter"] for row in logged) == 2
    assert (tmp_path / "work" / "checkpoints" / "last.pt").is_file()
