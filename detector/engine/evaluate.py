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


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``runtime.amp``; bf16 on a CPU without native bf16 kernels runs in fp32."""
    dtype = AMP_DTYPES[amp]
    if dtype is torch.bfloat16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("runtime.amp=bf16: this CPU has no native bf16 support (emulated bf16 is slower than "
                       "fp32); training in fp32")
        return None
    if dtype is torch.float16 and device.type == "cpu":
        raise ValueError("runtime.amp=fp16 needs a CUDA device; use bf16 or off on the CPU")
    return dtype


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
    results = run_inference(model, loader, device, amp_dtype=resolve_amp_dtype(cfg.runtime.amp, device),
                            progress=progress and is_main_process())
    model.train(was_training)
    results = gather_results(results)
    if not is_main_process():
        return {}
    if results_out:
        save_results(results_out, results)
        logger.info("wrote %d detections to %s", len(results), results_out)
    return build_evaluator(cfg, loader.dataset.ann_file).evaluate(results, per_class=per_class)
