"""Shared pieces of the benchmarks: inputs, model builders, device sync, medians over rotated rounds.

Every benchmark times with ``time.perf_counter`` around a call, synchronising the device before and after
on CUDA, repeats it in rounds (the compared variants take turns in an order that rotates every round, so
a slow spell of a shared machine falls on all of them) and reports the median.

On a CPU shared with other busy processes wall time measures the neighbours as much as the code:
``use_cpu_clock()`` (``--cpu-clock`` on the command lines) runs torch with one thread and times with
``time.thread_time``, the CPU seconds of the calling thread, which is where one-thread torch runs every
operator, forward and backward. That clock ignores time spent waiting for a core, so ratios between two
models hold up under load (memory-bandwidth and cache contention still add some noise).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
CONFIGS = {
    "retinanet": ("configs/retinanet/retinanet_r50_fpn_1x_coco.yaml", ["model.neck.p6_from=p5"]),
    "atss": ("configs/atss/atss_r50_fpn_1x_coco.yaml", []),
    "gfl": ("configs/gfl/gfl_r50_fpn_1x_coco.yaml", []),
}


_CLOCK = {"fn": time.perf_counter, "name": "wall"}


def use_cpu_clock(enabled: bool = True) -> None:
    """Time with the calling thread's CPU seconds and one torch thread (see the module docstring)."""
    if enabled:
        torch.set_num_threads(1)
        _CLOCK.update(fn=time.thread_time, name="thread CPU")
    else:
        _CLOCK.update(fn=time.perf_counter, name="wall")


def clock() -> float:
    return _CLOCK["fn"]()


def clock_name() -> str:
    return f"{_CLOCK['name']} clock, {torch.get_num_threads()} thread(s)"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def make_inputs(batch: int, size: int, num_boxes: int, num_classes: int, seed: int = 0):
    """[0, 1] images (B, 3, size, size) and per-image targets with ``num_boxes`` random boxes each."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(num_boxes, 2, generator=g) * size * 0.8
        wh = 8 + torch.rand(num_boxes, 2, generator=g) * (size * 0.5)
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (num_boxes,), generator=g)})
    return images, targets


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def build_ours(name: str, num_classes: int, extra: list[str] = (), depth: int | None = None) -> torch.nn.Module:
    """One of CONFIGS with random weights; ``depth`` overrides the backbone (18 for toy runs)."""
    from detector.config import load_config
    from detector.models import build_model

    path, overrides = CONFIGS[name]
    opts = [f"model.num_classes={num_classes}", "model.backbone.weights=null", *overrides, *extra]
    if depth is not None:
        opts.append(f"model.backbone.depth={depth}")
    torch.manual_seed(0)
    return build_model(load_config(str(ROOT / path), opts))


def build_torchvision(num_classes: int, size: int) -> torch.nn.Module:
    """retinanet_resnet50_fpn as torchvision builds it around pretrained weights (frozen BN, stem + layer1
    frozen, P6/P7 from P5), with random weights."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet, _default_anchorgen
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    body = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), trainable_layers=3,
                                 returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(body, num_classes, anchor_generator=_default_anchorgen(), min_size=size, max_size=size)


def time_rotating(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                  device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds of each call over ``repeats`` rounds after ``warmup``; the order rotates every round."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = clock()
            fns[name]()
            sync(device)
            if round_ >= warmup:
                times[name].append(clock() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(header: list[str], rows: list[list[object]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
