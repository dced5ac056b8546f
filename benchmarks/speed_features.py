"""Optional speed features, each against the baseline: step time and whether the weights change.

Features (config keys under ``runtime``): ``channels_last`` (model and images in channels-last memory format),
``fused_optimizer`` (torch's fused SGD instead of the multi-tensor one), ``compile`` (torch.compile of the
backbone, neck and head forward passes, as the trainer's ``compile_network`` does; the first step compiles,
about a minute per model on a 2-core CPU, so it is measured only with ``--compile``) and ``cudnn_benchmark``
(CUDA only; reported as not measurable on a CPU). Every variant starts from the same weights and takes the
same training steps on the same batch (SGD lr 0.01, momentum 0.9, weight decay 1e-4, through
``build_optimizer``); the variants take turns in rotating order, the median step time is reported, and
"max |param diff|" is the largest difference of any weight from the baseline's after all the steps.

    python benchmarks/speed_features.py                  # RetinaNet R18 at 256 px and R50 at 512 px
    python benchmarks/speed_features.py --compile --cpu-clock
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (build_ours, clock_name, default_device, make_inputs, median, normalise,  # noqa: E402
                               print_table, time_rotating, use_cpu_clock)

FEATURES = ["baseline", "channels_last", "fused_optimizer", "compile", "cudnn_benchmark"]


def _variant(feature: str, depth: int, classes: int, device: torch.device, images, targets):
    from detector.engine.model_setup import compile_network
    from detector.engine.optim import build_optimizer

    model = build_ours("retinanet", classes, depth=depth).to(device).train()
    inputs = images
    if feature == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        inputs = images.contiguous(memory_format=torch.channels_last)
    if feature == "compile":
        compile_network(model)
    optimizer = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4,
                                fused=feature == "fused_optimizer")

    def step():
        losses = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return model, step


def run_model(depth: int, size: int, batch: int = 2, boxes: int = 10, classes: int = 80, repeats: int = 3,
              features=("baseline", "channels_last", "fused_optimizer"), device: str | None = None) -> dict:
    device = torch.device(device or default_device())
    images, targets = make_inputs(batch, size, boxes, classes)
    images = normalise(images).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    features = [f for f in features if f != "cudnn_benchmark" or device.type == "cuda"]
    variants = {}
    for feature in features:
        if feature == "cudnn_benchmark":
            torch.backends.cudnn.benchmark = True  # applies to every variant after it: measured last
        variants[feature] = _variant(feature, depth, classes, device, images, targets)
    times = time_rotating({f: step for f, (_, step) in variants.items()}, repeats, warmup=1, device=device)
    torch.backends.cudnn.benchmark = False
    base = dict(variants["baseline"][0].named_parameters())
    out = {}
    for feature, (model, _) in variants.items():
        diff = max(float((p.detach() - base[name].detach()).abs().max()) for name, p in model.named_parameters())
        out[feature] = {"step": median(times[feature]), "max_param_diff": diff}
    return out


def run(models=((18, 256), (50, 512)), batch: int = 2, repeats: int = 3, compile_: bool = False,
        device: str | None = None, verbose: bool = True) -> dict:
    device = torch.device(device or default_device())
    features = ["baseline", "channels_last", "fused_optimizer"] + (["compile"] if compile_ else [])
    if device.type == "cuda":
        features.append("cudnn_benchmark")
    results = {f"R{depth} {size}px": run_model(depth, size, batch, repeats=repeats, features=features, device=device)
               for depth, size in models}
    if verbose:
        print(f"RetinaNet training step, batch {batch}, device {device}, {clock_name()}, medians of {repeats} "
              f"steps after 1 warm-up (compile={'measured' if compile_ else 'skipped: --compile'})")
        rows = []
        for model_name, res in results.items():
            base = res["baseline"]["step"]
            for feature in FEATURES:
                if feature in res:
                    r = res[feature]
                    rows.append([model_name, feature, f"{r['step']:.3f}", f"{r['step'] / base:.3f}",
                                 f"{r['max_param_diff']:.1e}"])
                elif feature == "cudnn_benchmark" and device.type != "cuda":
                    rows.append([model_name, feature, "not measurable (CUDA only)", "-", "-"])
                elif feature == "compile":
                    rows.append([model_name, feature, "skipped", "-", "-"])
        print_table(["model", "feature", "step (s)", "vs baseline", "max |param diff|"], rows)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-size", type=int, default=256)
    parser.add_argument("--r50-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cpu-clock", action="store_true", help="one thread, thread CPU time (a busy machine)")
    args = parser.parse_args(argv)
    use_cpu_clock(args.cpu_clock)
    return run(((18, args.small_size), (50, args.r50_size)), args.batch, args.repeats, args.compile, args.device)


if __name__ == "__main__":
    main()
