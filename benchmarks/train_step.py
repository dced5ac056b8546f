"""Training-step and inference time of focaldet's detectors against torchvision's RetinaNet, side by side.

torchvision's `retinanet_resnet50_fpn` is built with the setting it uses with pretrained weights (frozen
BatchNorm, stem + layer1 frozen, P6/P7 from P5), from random weights since nothing is downloaded here. Our
RetinaNet R50-FPN gets the same architecture (`model.neck.p6_from=p5`), and both the same loss setting (focal
alpha 0.25 / gamma 2, L1 box loss, MaxIoU 0.5 / 0.4 with low-quality matches), the same images, boxes and SGD
step. Our ATSS and GFL R50-FPN run beside them with their own configs. The models take turns, in an order
that rotates every round, and the median time of each is reported, with the ratio to torchvision's RetinaNet
(below 1: faster) and the share of the step spent in target assignment plus the loss computation.
Inference includes post-processing (score threshold, top-k, NMS) in both.

torchvision's model is called the way its users call it: a list of [0, 1] images that its transform
normalises and batches (min_size = max_size = the image size, so it does not rescale). Ours take the
normalised, padded batch their data loader produces. ``--channels-last`` puts *both* models (weights and
inputs) in channels-last memory format, so the comparison keeps identical settings.

    python benchmarks/train_step.py                      # 512 px, batch 2, 20 boxes (the README's table)
    python benchmarks/train_step.py --cpu-clock          # on a busy machine: one thread, thread CPU time
    python benchmarks/train_step.py --size 640 --boxes 50 --detectors retinanet gfl --device cuda
"""

from __future__ import annotations

import argparse
import sys
from functools import wraps
from pathlib import Path

import torch
import torchvision

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (CONFIGS, build_ours, build_torchvision, clock, clock_name, default_device,  # noqa: E402
                               make_inputs, median, normalise, print_table, sync, time_rotating, use_cpu_clock)

REFERENCE = "torchvision retinanet"


class LossTimer:
    """Wraps a head's ``loss`` (assignment + loss forward) to add up its time."""

    def __init__(self, head: torch.nn.Module, device: torch.device):
        self.total = 0.0
        original = head.loss

        @wraps(original)
        def timed(*args, **kwargs):
            sync(device)
            start = clock()
            out = original(*args, **kwargs)
            sync(device)
            self.total += clock() - start
            return out
        head.loss = timed


def run(size: int = 512, batch: int = 2, boxes: int = 20, classes: int = 80, repeats: int = 5, warmup: int = 1,
        device: str | None = None, detectors=("retinanet", "atss", "gfl"), channels_last: bool = False,
        opts=(), inference: bool = True, torchvision_model: bool = True, depth: int | None = None,
        verbose: bool = True) -> dict:
    """``{"train step": {name: median s}, "inference": {...}, "assign_loss": {name: s}}`` (+ ratios printed)."""
    device = torch.device(device or default_device())
    images, targets = make_inputs(batch, size, boxes, classes)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    ours_images = normalise(images).to(device).contiguous(memory_format=memory_format)
    runs = {}
    if torchvision_model:
        # Its transform batches the images itself (contiguous); channels-last weights make every conv run
        # channels-last from the first one on.
        runs[REFERENCE] = (build_torchvision(classes, size).to(device, memory_format=memory_format),
                           [im.to(device) for im in images])
    for name in detectors:
        runs[f"focaldet {name}"] = (build_ours(name, classes, list(opts), depth=depth).to(
            device, memory_format=memory_format), ours_images)
    timers = {name: LossTimer(model.head, device) for name, (model, _) in runs.items() if name.startswith("focal")}
    optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
                  for name, (m, _) in runs.items()}

    def train_step(name):
        model, inputs = runs[name]
        losses = model(inputs, targets)
        optimizers[name].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizers[name].step()

    def infer(name):
        model, inputs = runs[name]
        with torch.inference_mode():
            model(inputs)

    results: dict = {"settings": dict(size=size, batch=batch, boxes=boxes, classes=classes, device=str(device),
                                      clock=clock_name(), channels_last=channels_last)}
    if verbose:
        print(f"{batch} x {size}x{size} px, {boxes} boxes/image, {classes} classes, device {device}, "
              f"{clock_name()}, medians of {repeats}, torch {torch.__version__}, torchvision "
              f"{torchvision.__version__}, channels_last={channels_last} (all models)")
    modes = [("train step", train_step, True)] + ([("inference", infer, False)] if inference else [])
    for mode, fn, training in modes:
        for model, _ in runs.values():
            model.train(training)
        for timer in timers.values():
            timer.total = 0.0
        times = time_rotating({name: (lambda n=name: fn(n)) for name in runs}, repeats, warmup, device)
        medians = {name: median(t) for name, t in times.items()}
        results[mode] = medians
        if training:  # the timers also ran during the warm-up rounds
            results["assign_loss"] = {name: timer.total / (repeats + warmup) for name, timer in timers.items()}
        if verbose:
            reference = medians.get(REFERENCE)
            rows = []
            for name, value in medians.items():
                row = [name, f"{value:.3f}", f"{value / reference:.3f}" if reference else "-"]
                if training:
                    share = results["assign_loss"].get(name)
                    row += [f"{share:.3f}", f"{100 * share / value:.1f}%"] if share is not None else ["", ""]
                rows.append(row)
            print()
            print_table([mode, "median (s)", "vs torchvision retinanet"]
                        + (["assign + loss (s)", "share"] if training else []), rows)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--detectors", nargs="+", default=["retinanet", "atss", "gfl"], choices=sorted(CONFIGS))
    parser.add_argument("--channels-last", action="store_true", help="all models in channels-last format")
    parser.add_argument("--opts", nargs="*", default=[], help="extra config overrides for our models")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--cpu-clock", action="store_true", help="one thread, thread CPU time (a busy machine)")
    args = parser.parse_args(argv)
    use_cpu_clock(args.cpu_clock)
    return run(args.size, args.batch, args.boxes, args.classes, args.repeats, args.warmup, args.device,
               args.detectors, args.channels_last, args.opts, not args.skip_inference)


if __name__ == "__main__":
    main()
