"""Where a training step's time goes: backbone, neck, head, anchors, assignment, loss, backward, optimizer.

The step runs as ``DenseDetector.forward`` does: ``model.dense_outputs`` (its backbone, neck, head and
anchor generator timed by forward hooks), then ``head.loss``, backward and the optimizer; each stage inside a
``torch.profiler.record_function`` label and timed with ``perf_counter`` after a device synchronisation. The
assignment is timed by wrapping the head's assigner, and "loss" is the rest of ``head.loss``. The table gives
the median ms of each stage over the repeats and its share of their sum.
One more step runs under ``torch.profiler`` and the operators with the largest self time are listed.

    python benchmarks/profile_step.py                                  # RetinaNet R50-FPN, 512 px, batch 2
    python benchmarks/profile_step.py --detector gfl --size 640 --boxes 50
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (build_ours, clock, clock_name, default_device, make_inputs, median, normalise,  # noqa: E402
                               print_table, sync, use_cpu_clock)

STAGES = ["backbone", "neck", "head", "anchors", "assignment", "loss", "backward", "optimizer"]


class _AssignTimer:
    """Wraps ``assigner.assign_batched`` to add up its time (synchronised)."""

    def __init__(self, assigner, device):
        self.total = 0.0
        original = assigner.assign_batched

        def timed(*args, **kwargs):
            sync(device)
            start = clock()
            with record_function("assignment"):
                out = original(*args, **kwargs)
            sync(device)
            self.total += clock() - start
            return out
        assigner.assign_batched = timed


class _ModuleTimer:
    """While entered, forward hooks time the modules ``dense_outputs`` calls (synchronised, each in a
    ``record_function`` label) into ``times``."""

    STAGE_MODULES = (("backbone", "backbone"), ("neck", "neck"), ("head", "head"), ("anchors", "anchor_generator"))

    def __init__(self, model, device, times: dict[str, float]):
        self.model, self.device, self.times = model, device, times
        self.handles, self.open = [], {}

    def _start(self, stage, module, args):
        sync(self.device)
        label = record_function(stage)
        label.__enter__()
        self.open[stage] = (label, clock())

    def _stop(self, stage, module, args, output):
        sync(self.device)
        label, start = self.open.pop(stage)
        self.times[stage] = clock() - start
        label.__exit__(None, None, None)

    def __enter__(self):
        for stage, name in self.STAGE_MODULES:
            module = getattr(self.model, name)
            self.handles.append(module.register_forward_pre_hook(partial(self._start, stage)))
            self.handles.append(module.register_forward_hook(partial(self._stop, stage)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def step_by_stage(model, optimizer, images, targets, device, assign_timer) -> dict[str, float]:
    """One training step; seconds per stage."""
    times = {}

    def run(name, fn):
        sync(device)
        start = clock()
        with record_function(name):
            out = fn()
        sync(device)
        times[name] = clock() - start
        return out

    with _ModuleTimer(model, device, times):
        outputs = model.dense_outputs(images)
    assign_timer.total = 0.0
    losses = run("loss", lambda: model.head.loss(outputs, targets))
    times["assignment"] = assign_timer.total
    times["loss"] -= assign_timer.total
    run("backward", lambda: sum(losses.values()).backward())

    def optimizer_step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    run("optimizer", optimizer_step)
    return times


def conv_share(model, inputs, targets) -> float:
    """Share of one profiled training step's operator self time spent in convolutions (forward + backward)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step():
        losses = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    return sum(e.self_cpu_time_total for e in events if "conv" in e.key) / sum(e.self_cpu_time_total for e in events)


def run(detector: str = "retinanet", size: int = 512, batch: int = 2, boxes: int = 20, classes: int = 80,
        repeats: int = 5, warmup: int = 1, device: str | None = None, depth: int | None = None,
        top_ops: int = 15, channels_last: bool = False, compare_torchvision: bool = False,
        verbose: bool = True) -> dict:
    """Median seconds per stage (dict ``stages``), their sum ``step``, and the profiler's top operators."""
    device = torch.device(device or default_device())
    images, targets = make_inputs(batch, size, boxes, classes)
    images = normalise(images).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    model = build_ours(detector, classes, depth=depth).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    timer = _AssignTimer(model.head.assigner, device)
    samples = {stage: [] for stage in STAGES}
    for i in range(warmup + repeats):
        times = step_by_stage(model, optimizer, images, targets, device, timer)
        if i >= warmup:
            for stage in STAGES:
                samples[stage].append(times[stage])
    stages = {stage: median(samples[stage]) for stage in STAGES}
    total = sum(stages.values())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step_by_stage(model, optimizer, images, targets, device, timer)
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = [e for e in prof.key_averages() if e.key not in STAGES]
    ops.sort(key=lambda e: getattr(e, sort_key.replace("_total", "_total"), 0.0), reverse=True)
    top = [(e.key, getattr(e, sort_key) / 1e3, e.count) for e in ops[:top_ops]]
    shares = {}
    if compare_torchvision and device.type == "cpu":  # how much of a step any non-convolution change can reach
        from benchmarks.common import build_torchvision
        raw, _ = make_inputs(batch, size, boxes, classes)
        shares["focaldet"] = conv_share(model, images, targets)
        shares["torchvision"] = conv_share(build_torchvision(classes, size).train(), list(raw), targets)
    if verbose:
        print(f"{detector} R{depth or 50}-FPN training step, {batch} x {size}x{size} px, {boxes} boxes/image, "
              f"{classes} classes, device {device}, {clock_name()}, medians of {repeats}")
        print_table(["stage", "ms", "%"], [[s, f"{1e3 * stages[s]:.1f}", f"{100 * stages[s] / total:.1f}"]
                                           for s in STAGES] + [["step (sum)", f"{1e3 * total:.1f}", "100.0"]])
        print(f"\nTop {top_ops} operators by self time (one profiled step, profiler overhead included):")
        print_table(["operator", "self ms", "calls"], [[k, f"{ms:.1f}", n] for k, ms, n in top])
        for name, share in shares.items():
            print(f"convolutions (forward + backward) take {100 * share:.1f}% of a profiled {name} RetinaNet step's "
                  "operator self time")
    return {"stages": stages, "step": total, "top_ops": top, "conv_share": shares}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="retinanet", choices=["retinanet", "atss", "gfl"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=None, help="backbone depth (default: the config's 50)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--torchvision", action="store_true",
                        help="also the convolutions' share of a step, ours and torchvision's RetinaNet (CPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cpu-clock", action="store_true", help="one thread, thread CPU time (a busy machine)")
    args = parser.parse_args(argv)
    use_cpu_clock(args.cpu_clock)
    return run(args.detector, args.size, args.batch, args.boxes, args.classes, args.repeats, device=args.device,
               depth=args.depth, channels_last=args.channels_last, compare_torchvision=args.torchvision)


if __name__ == "__main__":
    main()
