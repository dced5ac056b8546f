"""Gradient accumulation (detector.engine.accumulation): an accumulated step equals the step on the batch in one
piece (frozen BatchNorm backbone, GroupNorm heads, fp32) for RetinaNet, ATSS (centerness normaliser), GFL (box-weight
normaliser), EFL (its ratio g held through the step) and the EFL improved baseline (GIoU weighted by IoU targets,
normalised by their sum); the cheaper per-micro-batch normalisation does not; the
counting pass leaves BatchNorm statistics alone; exact resume with accumulation and augmentations on."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.engine import accumulation
from detector.engine.accumulation import GradientAccumulator, split_batch
from detector.engine.trainer import Trainer
from detector.losses import EqualizedFocalLoss
from detector.models import build_model
from detector.runtime.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.backbone.norm=frozen_bn", "model.backbone.frozen_stages=1", "model.neck.out_channels=32",
        "model.head.num_convs=1", "model.head.feat_channels=64"]  # GroupNorm(32): 2 channels a group, as P7 is 1x1
MODELS = {
    "retinanet": ("quickstart.yaml", ()),
    "atss_centerness": ("quickstart_atss.yaml", ()),
    "gfl": ("quickstart_gfl.yaml", ()),
    "retinanet_efl": ("quickstart.yaml", ("model.loss_cls.type=equalized_focal",)),
    # ATSS assignment, IoU branch, EFL, GIoU weighted by each positive's IoU target over the targets' sum
    "efl_improved_baseline": ("quickstart_lvis_efl.yaml", ()),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def batch() -> tuple[torch.Tensor, list[dict]]:
    """4 images of 64 px holding 3, 0, 1 and 2 boxes: the micro-batches' positives differ a lot."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    targets = []
    for count in (3, 0, 1, 2):
        xy = torch.rand(count, 2, generator=generator) * 30
        wh = 10 + torch.rand(count, 2, generator=generator) * 24
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(0, 6, (count,), generator=generator)})
    return images, targets


def model_for(name: str, *extra: str) -> torch.nn.Module:
    config, opts = MODELS[name]
    torch.manual_seed(0)
    model = build_model(load_config(ROOT / "configs" / config, [*TINY, *opts, *extra]))
    return model.train()


def sgd_step(model, forward_backward) -> dict:
    """One SGD step (momentum, weight decay) after ``forward_backward()``; the gradients and the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    losses = forward_backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return {"grads": grads, "losses": losses}


def whole_batch(model) -> dict:
    images, targets = batch()

    def forward_backward():
        losses = model(images, targets)
        sum(losses.values()).backward()
        return {key: value.detach() for key, value in losses.items()}
    return sgd_step(model, forward_backward)


def accumulated(model, num_micro_batches: int, exact: bool = True) -> dict:
    accumulator = GradientAccumulator(model, num_micro_batches, 4, exact, contextlib.nullcontext,
                                      lambda loss: loss.backward())
    return sgd_step(model, lambda: accumulator.forward_backward(*batch())[0])


def assert_same(a: torch.nn.Module, b: torch.nn.Module, rtol=1e-5, atol=1e-7) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_micro_batches", [2, 4])
def test_accumulated_step_equals_the_whole_batch_step(name, num_micro_batches):
    reference = model_for(name)
    model = copy.deepcopy(reference)
    expected = whole_batch(reference)
    actual = accumulated(model, num_micro_batches)
    assert actual["losses"].keys() == expected["losses"].keys()
    for key, value in expected["losses"].items():  # the micro-batch losses add up to the batch's
        assert float(actual["losses"][key]) == pytest.approx(float(value), rel=1e-5), key
    assert actual["grads"].keys() == expected["grads"].keys() and len(expected["grads"]) > 20
    # float summation order only: within 1e-5 of the largest gradient entry (tensors whose gradients nearly cancel,
    # as a pyramid level without positives, differ by more than that relative to themselves)
    atol = 1e-5 * max(float(grad.abs().max()) for grad in expected["grads"].values())
    for key, grad in expected["grads"].items():
        torch.testing.assert_close(actual["grads"][key], grad, rtol=1e-4, atol=atol, msg=key)
    assert_same(reference, model)  # weights after the step, and buffers (EFL's statistics)


@pytest.mark.parametrize("name", ["retinanet", "gfl"])
def test_averaging_per_micro_batch_losses_is_not_the_batch_update(name):
    """accumulate_exact=false (each micro-batch normalised by its own positives, losses averaged) differs
    from the batch in one piece here (3 + 0 positives' boxes against 1 + 2): what the exact mode is for."""
    reference = model_for(name)
    model = copy.deepcopy(reference)
    expected = whole_batch(reference)["grads"]["head.cls_logits.weight"]
    actual = accumulated(model, 2, exact=False)
    assert not torch.allclose(actual["grads"]["head.cls_logits.weight"], expected, rtol=1e-2, atol=1e-5)
    # what it does compute: the mean of the two halves' own gradients
    halves = []
    for part in split_batch(*batch(), 2):
        half = copy.deepcopy(model_for(name))
        sum(half(*part).values()).backward()
        halves.append(half.head.cls_logits.weight.grad)
    torch.testing.assert_close(actual["grads"]["head.cls_logits.weight"], (halves[0] + halves[1]) / 2,
                               rtol=1e-4, atol=1e-7)


def test_efl_ratio_is_held_through_the_step(monkeypatch):
    """Without holding g, the second micro-batch would see the g the first one's gradients produced."""
    reference = model_for("retinanet_efl")
    whole_batch(reference)
    monkeypatch.setattr(accumulation, "held_efl_ratios", lambda model: contextlib.nullcontext())
    unheld = model_for("retinanet_efl")
    accumulated(unheld, 2)
    efl = [m for m in unheld.modules() if isinstance(m, EqualizedFocalLoss)][0]
    assert float(efl.pos_neg.min()) < 1.0  # g moved during the step
    with pytest.raises(AssertionError):
        assert_same(reference, unheld)


def test_counting_pass_leaves_batchnorm_statistics_alone():
    model = model_for("retinanet", "model.backbone.norm=bn")
    accumulated(model, 2)
    counts = [int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training]
    assert len(counts) > 10 and set(counts) == {2}  # one update per micro-batch trained; none from the counting


def test_micro_batches_must_split_the_batch():
    with pytest.raises(ValueError, match=r"schedule.accumulate \(3\) must divide the 4 images"):
        GradientAccumulator(torch.nn.Linear(1, 1), 3, 4, True, contextlib.nullcontext, lambda loss: None)
    with pytest.raises(ValueError, match="does not split into 3 equal micro-batches"):
        split_batch(*batch(), 3)


# ------------------------------------------------------------------- exact resume, through the trainer
def tiny_opts(root: Path, *extra: str) -> list[str]:
    return [f"data.synthetic.root={root}", "data.synthetic.num_train=16", "data.synthetic.num_val=8",
            "data.synthetic.image_size=64", "data.synthetic.min_object_size=8", "data.synthetic.max_object_size=40",
            "data.synthetic.max_objects=3",
            f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.val.ann_file={root}/annotations/instances_val.json", f"data.val.img_dir={root}/val",
            "data.min_size=[48,56,64]", "data.max_size=64", "data.batch_size=4", "data.num_workers=0",
            "model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32",
            "model.loss_cls.type=equalized_focal", "schedule.iters=12", "schedule.steps=[4]",
            "schedule.warmup_iters=2", "runtime.log_interval=1", "runtime.eval_at_end=false",
            "runtime.deterministic=true", "schedule.accumulate=2",  # micro-batches of 2 images
            "data.augment.photometric.prob=0.5", "data.augment.iou_crop.prob=0.5",
            "data.augment.random_resized_crop.prob=0.3", "data.augment.scale_jitter.prob=0.3",
            "data.augment.scale_jitter.size=[64,64]", *extra]


def test_resume_with_accumulation_and_augmentation_equals_the_uninterrupted_run(tmp_path):
    root = tmp_path / "syn"
    config = ROOT / "configs" / "quickstart.yaml"
    full = Trainer(load_config(config, tiny_opts(root, "schedule.max_iters=6")), tmp_path / "full", progress=False)
    full.fit()
    first = Trainer(load_config(config, tiny_opts(root, "schedule.max_iters=3")), tmp_path / "cut", progress=False)
    first.fit()
    second = Trainer(load_config(config, tiny_opts(root, "schedule.max_iters=6")), tmp_path / "cut", resume=True,
                     progress=False)
    assert second.iteration == 3  # optimiser steps, not micro-batches
    second.fit()
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("full", "cut"))
    assert a["iteration"] == b["iteration"] == 6 and a["scheduler"]["last_epoch"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():  # bit for bit: parameters, BatchNorm statistics, EFL sums
        assert torch.equal(value, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"]), index
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
