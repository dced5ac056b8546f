"""Evaluate a model on the config's val set: sharded inference, gathering, and COCO metrics on rank 0."""

from __future__ import annotations

import logging

import torch
from torch import nn

from detector.config_schema import Config
from detector.data.build import build_val_loader
from detector.engine.distributed import get_rank, get_world_size, is_main_process
from detector.evaluation import COCOEvaluator, gather_results, run_inference, save_results

logger = logging.getLogger("detector.engine")

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_evaluator(cfg: Config, ann_file: str) -> COCOEvaluator:
    """The evaluator for ``data.val.format`` (COCO metrics with ``model.test.max_dets`` detections)."""
    if cfg.data.val.format != "coco":
        raise ValueError(f"data.val.format {cfg.data.val.format!r}: only COCO evaluation is available in this "
                         "build")
    return COCOEvaluator(ann_file, max_dets=cfg.model.test.max_dets)


def evaluate_model(cfg: Config, model: nn.Module, device: torch.device, results_out: str | None = None,
                   per_class: bool = False, progress: bool = True) -> dict:
    """Run inference over the val set on every process and score it on the main process.

    Returns the metrics dict on the main process (an empty dict elsewhere).
    """
    loader = build_val_loader(cfg, rank=get_rank(), world_size=get_world_size())
    was_training = model.training
    results = run_inference(model, loader, device, amp_dtype=AMP_DTYPES[cfg.runtime.amp],
                            progress=progress and is_main_process())
    model.train(was_training)
    results = gather_results(results)
    if not is_main_process():
        return {}
    if results_out:
        save_results(results_out, results)
        logger.info("wrote %d detections to %s", len(results), results_out)
    return build_evaluator(cfg, loader.dataset.ann_file).evaluate(results, per_class=per_class)
