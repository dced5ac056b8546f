"""Training-step and inference time of focaldet's RetinaNet against torchvision's, side by side.

Both models are RetinaNet R50-FPN with the same architecture: P6/P7 from P5 (torchvision's v1 choice),
9 anchors per location, 4-conv 256-channel subnets, frozen BatchNorm, stem + layer1 frozen, focal loss
(alpha 0.25, gamma 2) and L1 box loss, MaxIoU 0.5 / 0.4 with low-quality matches. Both get the same images
and boxes, random weights (no downloads), and an SGD step each. Runs alternate between the two models and
the median of each is reported with the ratio ours / torchvision (below 1: we are faster).

torchvision's model is called the way its users call it: a list of [0, 1] images that its transform
normalises and batches (min_size = max_size = the image size, so it does not rescale). Ours takes the
normalised batch its data loader produces.

    python benchmarks/train_step.py                      # 512 px, batch 2, 20 boxes (the README's table)
    python benchmarks/train_step.py --size 640 --boxes 50 --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import retinanet_resnet50_fpn

from detector.config import load_config
from detector.models import build_model

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def make_inputs(batch: int, size: int, num_boxes: int, num_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(num_boxes, 2, generator=g) * size * 0.8
        wh = 8 + torch.rand(num_boxes, 2, generator=g) * (size * 0.5)
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(0, num_classes, (num_boxes,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def build_ours(num_classes: int, config: str, extra: list[str]) -> torch.nn.Module:
    cfg = load_config(config, [f"model.num_classes={num_classes}", "model.backbone.weights=null",
                               "model.neck.p6_from=p5", *extra])
    return build_model(cfg)


def build_torchvision(num_classes: int, size: int) -> torch.nn.Module:
    return retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                  min_size=size, max_size=size, trainable_backbone_layers=3)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per model and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="configs/retinanet/retinanet_r50_fpn_1x_coco.yaml")
    parser.add_argument("--opts", nargs="*", default=[], help="extra overrides for our model")
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    images, targets = make_inputs(args.batch, args.size, args.boxes, args.classes)
    ours = build_ours(args.classes, args.config, args.opts).to(device)
    theirs = build_torchvision(args.classes, args.size).to(device)
    ours_images = ((images - MEAN) / STD).to(device)
    theirs_images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    opt_theirs = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step(model, opt, inputs):
        def run():
            losses = model(inputs, targets)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
        return run

    def infer(model, inputs):
        def run():
            with torch.inference_mode():
                model(inputs)
        return run

    modes = [("train step", lambda: step(ours, opt_ours, ours_images), lambda: step(theirs, opt_theirs, theirs_images),
              True)]
    if not args.skip_inference:
        modes.append(("inference", lambda: infer(ours, ours_images), lambda: infer(theirs, theirs_images), False))

    print(f"RetinaNet R50-FPN, {args.batch} x {args.size}x{args.size} px, {args.boxes} boxes/image, "
          f"{args.classes} classes, device {device}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| stage | focaldet (s) | torchvision (s) | ratio |")
    print("| --- | --- | --- | --- |")
    for name, make_ours, make_theirs, training in modes:
        ours.train(training)
        theirs.train(training)
        run_ours, run_theirs = make_ours(), make_theirs()
        for _ in range(args.warmup):
            run_ours()
            run_theirs()
        times_ours, times_theirs = [], []
        for i in range(args.repeats):  # alternate, swapping who goes first, so drifts hit both alike
            pair = [(times_ours, run_ours), (times_theirs, run_theirs)]
            for times, fn in (pair if i % 2 == 0 else pair[::-1]):
                times.append(timed(fn, device))
        med_ours, med_theirs = statistics.median(times_ours), statistics.median(times_theirs)
        print(f"| {name} | {med_ours:.3f} | {med_theirs:.3f} | {med_ours / med_theirs:.3f} |")


if __name__ == "__main__":
    main()
