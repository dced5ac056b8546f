"""Training-step and inference time of focaldet's detectors against torchvision's RetinaNet, side by side.

torchvision's `retinanet_resnet50_fpn` is built with the setting it uses with pretrained weights (frozen
BatchNorm, stem + layer1 frozen, P6/P7 from P5), from random weights since nothing is downloaded here. Our
RetinaNet R50-FPN gets the same architecture (`model.neck.p6_from=p5`), and both the same loss setting (focal
alpha 0.25 / gamma 2, L1 box loss, MaxIoU 0.5 / 0.4 with low-quality matches), the same images, boxes and SGD
step. Our ATSS and GFL R50-FPN run beside them with their own configs. The models take turns, in an order
that rotates every round, and the median time of each is reported, with the ratio to torchvision's RetinaNet
(below 1: faster) and the share of the step spent in target assignment plus the loss computation.

torchvision's model is called the way its users call it: a list of [0, 1] images that its transform
normalises and batches (min_size = max_size = the image size, so it does not rescale). Ours take the
normalised, padded batch their data loader produces.

    python benchmarks/train_step.py                      # 512 px, batch 2, 20 boxes (the README's table)
    python benchmarks/train_step.py --size 640 --boxes 50 --detectors retinanet gfl --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import wraps

import torch
import torchvision
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNet, _default_anchorgen
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detector.config import load_config
from detector.models import build_model

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
CONFIGS = {
    "retinanet": ("configs/retinanet/retinanet_r50_fpn_1x_coco.yaml", ["model.neck.p6_from=p5"]),
    "atss": ("configs/atss/atss_r50_fpn_1x_coco.yaml", []),
    "gfl": ("configs/gfl/gfl_r50_fpn_1x_coco.yaml", []),
}


def make_inputs(batch: int, size: int, num_boxes: int, num_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(num_boxes, 2, generator=g) * size * 0.8
        wh = 8 + torch.rand(num_boxes, 2, generator=g) * (size * 0.5)
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (num_boxes,), generator=g)})
    return images, targets


def build_ours(name: str, num_classes: int, extra: list[str], channels_last: bool) -> torch.nn.Module:
    path, overrides = CONFIGS[name]
    cfg = load_config(path, [f"model.num_classes={num_classes}", "model.backbone.weights=null", *overrides, *extra])
    model = build_model(cfg)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_torchvision(num_classes: int, size: int) -> torch.nn.Module:
    """retinanet_resnet50_fpn as torchvision builds it around pretrained weights, with random weights."""
    body = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), trainable_layers=3,
                                 returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(body, num_classes, anchor_generator=_default_anchorgen(), min_size=size, max_size=size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LossTimer:
    """Wraps a head's ``loss`` (assignment + loss forward) to add up its time."""

    def __init__(self, head: torch.nn.Module, device: torch.device):
        self.total = 0.0
        original = head.loss

        @wraps(original)
        def timed(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = original(*args, **kwargs)
            sync(device)
            self.total += time.perf_counter() - start
            return out
        head.loss = timed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detectors", nargs="+", default=["retinanet", "atss", "gfl"], choices=sorted(CONFIGS))
    parser.add_argument("--channels-last", action="store_true", help="our models in channels-last format")
    parser.add_argument("--opts", nargs="*", default=[], help="extra config overrides for our models")
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    images, targets = make_inputs(args.batch, args.size, args.boxes, args.classes)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    ours_images = ((images - MEAN) / STD).to(device)
    if args.channels_last:
        ours_images = ours_images.contiguous(memory_format=torch.channels_last)
    runs = {"torchvision retinanet": (build_torchvision(args.classes, args.size).to(device),
                                      [im.to(device) for im in images])}
    for name in args.detectors:
        runs[f"focaldet {name}"] = (build_ours(name, args.classes, args.opts, args.channels_last).to(device),
                                    ours_images)
    timers = {name: LossTimer(model.head, device) for name, (model, _) in runs.items() if name.startswith("focal")}
    optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
                  for name, (m, _) in runs.items()}

    def train_step(name):
        model, inputs = runs[name]
        losses = model(inputs, targets)
        optimizers[name].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizers[name].step()

    def inference(name):
        model, inputs = runs[name]
        with torch.inference_mode():
            model(inputs)

    print(f"{args.batch} x {args.size}x{args.size} px, {args.boxes} boxes/image, {args.classes} classes, "
          f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, ours channels_last={args.channels_last}")
    modes = [("train step", train_step, True)] + ([] if args.skip_inference else [("inference", inference, False)])
    for mode, fn, training in modes:
        names = list(runs)
        times = {name: [] for name in names}
        for model, _ in runs.values():
            model.train(training)
        for round_ in range(args.warmup + args.repeats):
            if round_ == args.warmup:
                for timer in timers.values():
                    timer.total = 0.0
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                sync(device)
                start = time.perf_counter()
                fn(name)
                sync(device)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        reference = statistics.median(times["torchvision retinanet"])
        print(f"\n| {mode} | median (s) | vs torchvision retinanet |" + (" assign + loss (s) | share |"
                                                                        if training else ""))
        print("| --- | --- | --- |" + (" --- | --- |" if training else ""))
        for name in names:
            median = statistics.median(times[name])
            row = f"| {name} | {median:.3f} | {median / reference:.3f} |"
            if training and name in timers:
                loss_time = timers[name].total / args.repeats
                row += f" {loss_time:.3f} | {100 * loss_time / median:.1f}% |"
            elif training:
                row += " | |"
            print(row)


if __name__ == "__main__":
    main()
