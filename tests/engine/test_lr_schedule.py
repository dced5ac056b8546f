"""Tests for detector.engine.lr_schedule: warm-up + multi-step values, resume, epoch conversion."""

import io

import pytest
import torch

from detector.engine.lr_schedule import WarmupMultiStepLR, epochs_to_iters


def _make(base_lrs=(0.01,), **kwargs):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=base_lrs[0])
    defaults = dict(milestones=[60, 80], gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    defaults.update(kwargs)
    return optimizer, WarmupMultiStepLR(optimizer, **defaults)


def _advance(optimizer, scheduler, num_steps):
    for _ in range(num_steps):
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(
    "iteration, expected",
    [
        (0, 0.01 * 0.001),                          # warm-up start: base * warmup_factor
        (5, 0.01 * (0.001 * 0.5 + 0.5)),            # mid warm-up: 0.0050050
        (9, 0.01 * (0.001 * 0.1 + 0.9)),            # last warm-up iteration
        (10, 0.01),                                 # warm-up done
        (59, 0.01),                                 # just before the first milestone
        (60, 0.001),                                # first milestone reached (milestone <= t)
        (79, 0.001),
        (80, 0.0001),                               # second milestone
        (200, 0.0001),
    ],
)
def test_lr_at_hand_computed_iterations(iteration, expected):
    optimizer, scheduler = _make()
    _advance(optimizer, scheduler, iteration)
    assert scheduler.last_epoch == iteration == scheduler.iteration
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    assert scheduler.get_last_lr()[0] == pytest.approx(expected, rel=1e-9)


def test_per_group_base_lrs_and_no_warmup():
    optimizer, scheduler = _make(base_lrs=(0.02, 0.01), warmup_iters=0, milestones=[3])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.01])
    _advance(optimizer, scheduler, 3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.002, 0.001])


def test_warmup_overlapping_milestone():
    optimizer, scheduler = _make(milestones=[4], warmup_iters=10, warmup_factor=0.5, gamma=0.5)
    _advance(optimizer, scheduler, 4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (0.5 * 0.6 + 0.4) * 0.5)


def test_state_dict_round_trip_mid_schedule_through_weights_only_load():
    optimizer, scheduler = _make()
    _advance(optimizer, scheduler, 7)  # mid warm-up
    buffer = io.BytesIO()
    torch.save({"scheduler": scheduler.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    # Fresh objects as at the start of a resumed run; load scheduler first, optimizer order not required.
    optimizer2, scheduler2 = _make()
    scheduler2.load_state_dict(state["scheduler"])
    assert scheduler2.last_epoch == 7
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    for _ in range(60):
        _advance(optimizer, scheduler, 1)
        _advance(optimizer2, scheduler2, 1)
        assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
    assert scheduler2.last_epoch == 67
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.001)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        _make(milestones=[80, 60])
    with pytest.raises(ValueError):
        _make(warmup_factor=0.0)
    with pytest.raises(ValueError):
        _make(warmup_iters=-1)


def test_epochs_to_iters():
    assert epochs_to_iters([8, 11], iters_per_epoch=100) == [800, 1100]
    assert epochs_to_iters([7.5], iters_per_epoch=3) == [22]  # round(22.5) -> banker's rounding to 22
    assert epochs_to_iters([], iters_per_epoch=10) == []
    with pytest.raises(ValueError):
        epochs_to_iters([1], iters_per_epoch=0)
