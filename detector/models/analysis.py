"""Model analysis: parameters per module and FLOPs of one inference forward.

Parameters: every ``nn.Parameter`` counted once (buffers such as frozen BatchNorm statistics and affine
are not parameters), attributed to each module on its path; "trainable" counts those with
``requires_grad`` (frozen backbone stages excluded).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward in eval mode under ``torch.no_grad``.
It counts matrix products and convolutions, one multiply-add as 2 FLOPs (a k x k convolution from C_in to
C_out channels over an H x W output: 2 * C_in * k * k * C_out * H * W; biases, normalisation, activations,
interpolation and post-processing are not counted). A module called several times (the head, once per FPN
level) accumulates all its calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class ModuleStats:
    path: str        # dotted module path; "" for the whole model
    params: int
    trainable: int
    flops: int | None = None


def parameter_stats(model: nn.Module, max_depth: int) -> list[ModuleStats]:
    """Rows for the whole model and every module at most ``max_depth`` levels deep, in definition order."""
    if max_depth < 0:
        raise ValueError(f"depth must be >= 0, got {max_depth}")
    rows = {"": ModuleStats("", 0, 0)}
    for path, _ in model.named_modules():
        if path and path.count(".") < max_depth:
            rows[path] = ModuleStats(path, 0, 0)
    for name, param in model.named_parameters():  # shared parameters appear once
        parts = name.split(".")[:-1]
        for depth in range(min(len(parts), max_depth) + 1):
            row = rows.get(".".join(parts[:depth]))
            if row is not None:
                row.params += param.numel()
                row.trainable += param.numel() if param.requires_grad else 0
    return list(rows.values())


def count_flops(model: nn.Module, images: torch.Tensor) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module path) of ``model(images)`` in eval mode (FlopCounterMode's rules)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(images)
    finally:
        model.train(was_training)
    root = type(model).__name__
    per_module = {}
    for key, counts in counter.get_flop_counts().items():
        if key == root or key.startswith(root + "."):  # keys are "<RootClass>.<path>"; "Global" is the total
            per_module[key[len(root) + 1:]] = int(sum(counts.values()))
    return int(counter.get_total_flops()), per_module


def padded_size(height: int, width: int, size_divisor: int) -> tuple[int, int]:
    """The network input the loaders build: each side rounded up to a multiple of ``size_divisor``."""
    divisor = max(1, size_divisor)
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def analyze(model: nn.Module, input_size: tuple[int, int], max_depth: int,
            device: torch.device | str = "cpu") -> tuple[list[ModuleStats], int]:
    """Parameter rows with their FLOPs for one (1, 3, H, W) input, and the total FLOPs."""
    model = model.to(device)
    images = torch.randn(1, 3, *input_size, device=device)
    total, per_module = count_flops(model, images)
    modules = dict(model.named_modules())

    def flops_of(path: str) -> int:  # a container never called itself (ModuleList): its children's sum
        if path in per_module:
            return per_module[path]
        return sum(flops_of(f"{path}.{name}") for name, _ in modules[path].named_children())

    rows = parameter_stats(model, max_depth)
    for row in rows:
        row.flops = total if row.path == "" else flops_of(row.path)
    return rows, total


def format_table(rows: list[ModuleStats]) -> str:
    """A markdown table: module, parameters, trainable parameters, GFLOPs."""
    lines = ["| module | params | trainable | GFLOPs |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        indent = "  " * row.path.count(".") if row.path else ""
        flops = "" if row.flops is None else f"{row.flops / 1e9:.2f}"
        lines.append(f"| {indent}{row.path or '(total)'} | {row.params:,} | {row.trainable:,} | {flops} |")
    return "\n".join(lines)
