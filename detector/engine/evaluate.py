"""Evaluate a model on the config's val set: sharded inference, gathering, and COCO / LVIS metrics on rank 0.

Every process predicts its own contiguous shard of the val set (no duplicates, no padding). COCO results
are gathered to rank 0 as lists; LVIS results (up to 300 detections on ~20k images) travel as columnar
``.npz`` shards written by each rank into ``shard_dir`` and merged on rank 0, so no process holds a
pickled copy of everything twice.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detector.config_schema import Config
from detector.data.build import build_dataset, build_val_loader
from detector.data.coco import CocoDetection
from detector.data.lvis import LVISDetection
from detector.evaluation import (COCOEvaluator, LVISEvaluator, gather_results, merge_result_shards, run_inference,
                                 save_results, write_results_shard)
from detector.evaluation.ground_truth import missing_area_message
from detector.evaluation.tta import build_tta
from detector.runtime.device import resolve_amp_dtype
from detector.runtime.distributed import barrier, get_rank, get_world_size, is_main_process
from detector.visualization.detections import draw_first_images

logger = logging.getLogger("detector.engine")


def build_evaluator(cfg: Config, ann_file: str) -> COCOEvaluator | LVISEvaluator:
    """COCO or LVIS evaluator for ``data.val.format`` (backend ``evaluation.coco_backend`` /
    ``evaluation.lvis_backend``), counting ``model.test.max_dets``."""
    if cfg.data.val.format == "lvis":
        return LVISEvaluator(ann_file, max_dets=cfg.model.test.max_dets, backend=cfg.evaluation.lvis_backend)
    return COCOEvaluator(ann_file, max_dets=cfg.model.test.max_dets, backend=cfg.evaluation.coco_backend)


def check_evaluable(dataset: CocoDetection | LVISDetection) -> None:
    """Raise ValueError, naming the file and the first annotation id, when the val set's ground truth lacks
    ``area`` somewhere: the evaluators refuse it (see ``evaluation.ground_truth``), so say it before inference."""
    num_missing = dataset.stats["num_without_area"]
    if num_missing:
        ann_id, image_id = dataset.first_without_area
        raise ValueError(missing_area_message(dataset.ann_file, ann_id, image_id, num_missing))


def check_val_set(cfg: Config, train_set: CocoDetection | LVISDetection) -> None:
    """Check, before training, what the evaluations will need, instead of failing at the first one hours later:
    the val annotations load (with every check of the readers) and name as many classes as model.num_classes,
    the training set's classes (ids and names, in order), with the areas the evaluators need; data.val.img_dir
    is a folder and the first val image decodes. Raises one-line errors naming the file."""
    val_set = build_dataset(cfg, "val")
    ann_file, img_dir = cfg.data.val.ann_file, cfg.data.val.img_dir
    if len(val_set) == 0:
        raise ValueError(f"{ann_file}: the val set lists no images, so evaluation has nothing to score (set "
                         "runtime.eval_at_end=false and runtime.eval_interval=null to train without it)")
    if val_set.cat_ids != train_set.cat_ids or val_set.class_names != train_set.class_names:
        pairs = zip(zip(train_set.cat_ids, train_set.class_names), zip(val_set.cat_ids, val_set.class_names))
        first = next(((label, train, val) for label, (train, val) in enumerate(pairs) if train != val), None)
        detail = (f"class {first[0]} is {first[1]} (id, name) in training and {first[2]} in val" if first
                  else f"{train_set.num_classes} classes in training, {val_set.num_classes} in val")
        raise ValueError(f"{ann_file} and {train_set.ann_file} name different classes: {detail}; the val set must "
                         "use the training set's categories (same ids and names, in the same order)")
    check_evaluable(val_set)
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(f"data.val.img_dir {img_dir}: no such folder (the images of {ann_file})")
    val_set.load_image(0)  # BadImageError naming the file and the image id


def columns_to_results(columns: dict) -> list[dict]:
    """Columnar results (image_id, category_id, bbox (N, 4), score) as COCO result dicts."""
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in zip(
        columns["image_id"].tolist(), columns["category_id"].tolist(), np.asarray(columns["bbox"]).tolist(),
        columns["score"].tolist())]


def gather_lvis_shards(results: list[dict], shard_dir: Path) -> dict | None:
    """Write this rank's results as a shard; rank 0 returns every rank's, merged in rank order."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_results_shard(shard_dir / f"shard_{get_rank():05d}.npz", results)
    barrier()
    merged = None
    if is_main_process():
        merged = merge_result_shards([shard_dir / f"shard_{r:05d}.npz" for r in range(get_world_size())])
        shutil.rmtree(shard_dir, ignore_errors=True)
    return merged


def evaluate_model(cfg: Config, model: nn.Module, device: torch.device, results_out: str | None = None,
                   per_class: bool = False, progress: bool = True, shard_dir: str | Path | None = None,
                   pr_curves: bool = False, keep_images: int = 0) -> dict:
    """Run inference over the val set on every process and score it on the main process; with
    ``evaluation.tta`` set, each image is predicted over its augmented views, merged (detector.evaluation.tta).

    Returns the metrics dict on the main process (an empty dict elsewhere). ``shard_dir`` (a folder every
    process can write) is needed for LVIS with several processes. ``pr_curves`` adds the evaluator's
    per-class precision-recall curves (``"pr_curves"``); ``keep_images`` > 0 adds the first that many val
    images drawn with their ground truth and detections (``"images"``: ``{"image_<id>": uint8 (3, H, W)}``).
    """
    loader = build_val_loader(cfg, rank=get_rank(), world_size=get_world_size())
    check_evaluable(loader.dataset)  # every process alike, before the inference it would waste
    was_training = model.training
    inference_model = build_tta(model, cfg.evaluation.tta, cfg)  # the model itself when evaluation.tta is null
    results = run_inference(inference_model, loader, device, amp_dtype=resolve_amp_dtype(cfg.runtime.amp, device),
                            progress=progress and is_main_process())
    model.train(was_training)
    if cfg.data.val.format == "lvis" and get_world_size() > 1:
        if shard_dir is None:
            raise ValueError("LVIS evaluation with several processes needs a shared shard_dir")
        merged = gather_lvis_shards(results, Path(shard_dir))
        del results
        if not is_main_process():
            return {}
        results = merged if not results_out else columns_to_results(merged)
    else:
        results = gather_results(results)
        if not is_main_process():
            return {}
    if results_out:
        save_results(results_out, results)
        logger.info("wrote %d detections to %s", len(results), results_out)
    images = draw_first_images(loader.dataset, results, keep_images) if keep_images else None
    metrics = build_evaluator(cfg, loader.dataset.ann_file).evaluate(results, per_class=per_class,
                                                                     pr_curves=pr_curves)
    if images is not None:
        metrics["images"] = images
    return metrics
