"""The model a training run steps: built from the config, on its device, with the run's speed options."""

from __future__ import annotations

import torch
from torch import nn

from detector.config_schema import Config
from detector.models import build_model


def compile_network(model: nn.Module) -> None:
    """torch.compile the backbone, neck and head forward passes in place (parameter names unchanged).

    Target assignment and the losses stay eager: their shapes change with the number of boxes per batch,
    which would make the compiler recompile again and again.
    """
    for name in ("backbone", "neck", "head"):
        getattr(model, name).compile()


def build_training_model(cfg: Config, device: torch.device, world_size: int) -> nn.Module:
    """``build_model(cfg)`` on ``device``; SyncBatchNorm across processes (``model.backbone.norm=syncbn``),
    channels-last memory, cuDNN autotuning and ``torch.compile`` as ``runtime.*`` asks (DDP wraps it later)."""
    model = build_model(cfg).to(device)
    if cfg.model.backbone.norm == "syncbn" and world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.runtime.cudnn_benchmark and not cfg.runtime.deterministic:
        torch.backends.cudnn.benchmark = True
    if cfg.runtime.compile:
        compile_network(model)
    return model
