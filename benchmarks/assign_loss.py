"""Target assignment + loss as a share of a training step, scaling with the number of ground-truth boxes.

For each detector (RetinaNet R50-FPN: MaxIoU + focal + L1; GFL R50-FPN: ATSS + QFL + DFL + GIoU) the
model's ``dense_outputs`` of one batch are computed once and detached; then, with 10 / 50 / 200 boxes per image:

* assign: ``assigner.assign_batched`` on the padded ground truths (the IoU matrix of G boxes x all anchors
  for MaxIoU, the per-level nearest candidates for ATSS), timed by wrapping the assigner;
* loss: the rest of ``head.loss`` plus the backward of the losses into the head outputs (the part of the
  backward pass the loss adds), i.e. ``autograd.grad(sum(losses), outputs)``;
* step: a whole training step (forward, loss, backward, SGD) measured at ``--step-boxes`` boxes; the step at
  another box count is that time with the assign + loss times swapped for the ones of that count.

    python benchmarks/assign_loss.py                         # 640 px, batch 2, 10 / 50 / 200 boxes
    python benchmarks/assign_loss.py --detectors retinanet --boxes 50 --device cuda
"""

from __future__ import annotations

import argparse

import torch

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (build_ours, clock, clock_name, default_device, make_inputs, median, normalise,  # noqa: E402
                               print_table, sync, time_rotating, use_cpu_clock)

TARGETS = {"retinanet": 0.05, "gfl": 0.10}  # the share of the step assign + loss may take


def _leaf(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A detached copy that requires grad: the loss's backward stops at the head outputs."""
    return None if tensor is None else tensor.detach().requires_grad_()


def _time_assign_loss(model, outputs, targets, device, repeats: int) -> tuple[float, float]:
    """Median seconds of (assignment, loss forward + backward into the outputs)."""
    assigner = model.head.assigner
    original = assigner.assign_batched
    spent = [0.0]

    def timed(*args, **kwargs):
        sync(device)
        start = clock()
        out = original(*args, **kwargs)
        sync(device)
        spent[0] += clock() - start
        return out

    assigner.assign_batched = timed
    grads_of = [o for o in (outputs.pred_logits, outputs.pred_regression, outputs.pred_quality) if o is not None]
    assign_times, loss_times = [], []
    try:
        for i in range(repeats + 1):
            spent[0] = 0.0
            sync(device)
            start = clock()
            losses = model.head.loss(outputs, targets)
            torch.autograd.grad(sum(losses.values()), grads_of, allow_unused=True)
            sync(device)
            total = clock() - start
            if i > 0:  # the first call warms up
                assign_times.append(spent[0])
                loss_times.append(total - spent[0])
    finally:
        del assigner.assign_batched  # back to the class method
    return median(assign_times), median(loss_times)


def run(detectors=("retinanet", "gfl"), box_counts=(10, 50, 200), size: int = 640, batch: int = 2,
        classes: int = 80, step_boxes: int = 50, repeats: int = 5, step_repeats: int = 3,
        device: str | None = None, depth: int | None = None, verbose: bool = True) -> dict:
    """Per detector and box count: assign, loss, step seconds and the share; plus ``met`` per detector at
    ``step_boxes`` against TARGETS."""
    device = torch.device(device or default_device())
    results: dict = {}
    for name in detectors:
        model = build_ours(name, classes, depth=depth).to(device).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        images, step_targets = make_inputs(batch, size, step_boxes, classes)
        images = normalise(images).to(device)
        step_targets = [{k: v.to(device) for k, v in t.items()} for t in step_targets]

        def train_step():
            losses = model(images, step_targets)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()

        step = median(time_rotating({name: train_step}, step_repeats, warmup=1, device=device)[name])
        with torch.no_grad():
            outputs = model.dense_outputs(images)
        outputs = outputs._replace(pred_logits=_leaf(outputs.pred_logits),
                                   pred_regression=_leaf(outputs.pred_regression),
                                   pred_quality=_leaf(outputs.pred_quality))
        rows = {}
        for count in sorted(set(box_counts) | {step_boxes}):
            _, targets = make_inputs(batch, size, count, classes, seed=count)
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            rows[count] = _time_assign_loss(model, outputs, targets, device, repeats)
        base_assign, base_loss = rows[step_boxes]
        network = step - base_assign - base_loss
        table = {}
        for count, (assign, loss) in rows.items():
            total = network + assign + loss
            table[count] = {"assign": assign, "loss": loss, "step": total, "share": (assign + loss) / total}
        results[name] = {"rows": table, "target": TARGETS.get(name), "anchors": int(outputs.anchors.shape[0]),
                         "met": table[step_boxes]["share"] <= TARGETS.get(name, 1.0)}
        del model, optimizer, outputs
    if verbose:
        print(f"assign + loss share of a training step: {batch} x {size}x{size} px, {classes} classes, device "
              f"{device}, {clock_name()}, R{depth or 50}-FPN; step measured at {step_boxes} "
              f"boxes/image (median of {step_repeats}), assign / loss medians of {repeats}")
        body = []
        for name, res in results.items():
            for count, r in sorted(res["rows"].items()):
                if count not in box_counts:
                    continue
                target = f"<= {100 * res['target']:.0f}%" if res["target"] else "-"
                body.append([name, res["anchors"], count, f"{1e3 * r['assign']:.1f}", f"{1e3 * r['loss']:.1f}",
                             f"{r['step']:.3f}", f"{100 * r['share']:.2f}%", target])
        print_table(["detector", "anchors", "boxes/image", "assign ms", "loss ms (fwd + bwd)", "step s", "share",
                     "target"], body)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=["retinanet", "gfl"], choices=["retinanet", "atss", "gfl"])
    parser.add_argument("--boxes", nargs="+", type=int, default=[10, 50, 200])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--step-boxes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cpu-clock", action="store_true", help="one thread, thread CPU time (a busy machine)")
    args = parser.parse_args(argv)
    use_cpu_clock(args.cpu_clock)
    return run(args.detectors, args.boxes, args.size, args.batch, args.classes, args.step_boxes, args.repeats,
               args.step_repeats, args.device, args.depth)


if __name__ == "__main__":
    main()
