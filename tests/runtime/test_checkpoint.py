"""Tests for detector.runtime.checkpoint: atomic saves, rolling checkpoints, RNG state in checkpoints, resume."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detector.runtime import checkpoint as ckpt
from detector.runtime.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint
from detector.runtime.model_state import load_model_state
from detector.runtime.seeding import capture_rng_state, restore_rng_state

REPO_ROOT = Path(__file__).resolve().parents[2]


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((4, 4), value)}, "iteration": int(value), "meta": ["a", 1, 2.5, None]}


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, _state(3.0))
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.full((4, 4), 3.0))
    assert state["iteration"] == 3 and state["meta"] == ["a", 1, 2.5, None]
    assert os.listdir(path.parent) == ["ckpt.pt"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_save_rejects_values_weights_only_cannot_load(tmp_path):
    path = tmp_path / "bad.pt"
    with pytest.raises(TypeError, match=r"state\['metrics'\]\['ap'\].*numpy"):
        save_checkpoint(path, {"metrics": {"ap": np.float64(0.5)}})
    assert not path.exists() and os.listdir(tmp_path) == []


def test_crash_during_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))
    real_save = torch.save

    def crashing_save(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip archive")  # a partial write reaches the disk ...
        raise OSError("simulated crash in the middle of torch.save")  # ... then the writer dies

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(ckpt.CheckpointWriteError, match=f"cannot write checkpoint {path}: simulated crash") as error:
        save_checkpoint(path, _state(2.0))
    assert isinstance(error.value.os_error, OSError)
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    state = load_checkpoint(path)  # the old checkpoint is intact and loadable
    assert torch.equal(state["model"]["w"], torch.full((4, 4), 1.0))


def test_kill_9_during_repeated_saves_never_corrupts(tmp_path):
    """A real SIGKILL while a child process keeps rewriting checkpoints: last.pt always loads."""
    directory = tmp_path / "ckpts"
    child = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from detector.runtime.checkpoint import CheckpointManager
        manager = CheckpointManager({str(directory)!r}, keep_last=2)
        big = torch.arange(1_000_000, dtype=torch.float32)  # ~4 MB, so kills land inside writes
        iteration = 0
        while True:
            iteration += 1
            manager.save({{"iteration": iteration, "weights": big + iteration}}, iteration)
    """)
    process = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.monotonic() + 60
        # Wait for the third save. Poll the newest iteration rather than one file name: with keep_last=2,
        # iter_0000003.pt is pruned two saves later and could appear and vanish between two polls.
        while max((int(p.stem[len("iter_"):]) for p in directory.glob("iter_*.pt")), default=0) < 3:
            assert process.poll() is None, "checkpoint writer died"
            assert time.monotonic() < deadline, "checkpoint writer too slow"
            time.sleep(0.02)
        time.sleep(0.13)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    manager = CheckpointManager(directory, keep_last=2)  # removes the killed writer's temporaries
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]
    state = load_checkpoint(manager.latest())
    assert state["iteration"] >= 2
    expected = torch.arange(1_000_000, dtype=torch.float32)
    assert torch.equal(state["weights"], expected + state["iteration"])  # complete, not truncated
    for iteration, path in manager.list_checkpoints():
        assert torch.equal(load_checkpoint(path)["weights"], expected + iteration)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(missing)
    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(corrupt, _state(1.0))
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    not_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_dict)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(not_dict)


def test_manager_keep_last_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None
    for iteration in (100, 200, 300, 400, 500):
        path = manager.save(_state(float(iteration)), iteration)
        assert path.name == f"iter_{iteration:07d}.pt"
    assert sorted(os.listdir(tmp_path)) == ["iter_0000400.pt", "iter_0000500.pt", "last.pt"]
    assert [it for it, _ in manager.list_checkpoints()] == [400, 500]
    assert manager.latest() == tmp_path / "last.pt"
    assert not (tmp_path / "last.pt").is_symlink()
    assert load_checkpoint(manager.latest())["iteration"] == 500
    # last.pt is an independent file: deleting its source does not affect it
    (tmp_path / "iter_0000500.pt").unlink()
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 500
    (tmp_path / "last.pt").unlink()
    assert manager.latest() == tmp_path / "iter_0000400.pt"


def test_manager_save_without_keeping_only_rewrites_last(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for iteration in (10, 20):
        manager.save(_state(float(iteration)), iteration)
    assert manager.save(_state(25.0), 25, keep=False) == tmp_path / "last.pt"
    assert sorted(os.listdir(tmp_path)) == ["iter_0000010.pt", "iter_0000020.pt", "last.pt"]
    assert load_checkpoint(manager.latest())["iteration"] == 25
    assert load_checkpoint(tmp_path / "iter_0000020.pt")["iteration"] == 20  # not touched through the link


def test_manager_copies_last_when_hard_links_unsupported(tmp_path, monkeypatch):
    def no_link(*args, **kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(ckpt.os, "link", no_link)
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(_state(1.0), 1)
    manager.save(_state(2.0), 2)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000002.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_manager_removes_only_temporaries_of_writers_that_are_gone(tmp_path):
    import socket
    host = socket.gethostname()
    dead, alive = _dead_pid(), os.getppid()  # the parent (pytest's launcher) runs for the whole test
    ours = [f".last.pt.{host}.{os.getpid()}.ab12.tmp", f".iter_0000010.pt.{host}.{dead}.xyz.tmp"]
    theirs = [f".last.pt.{host}.{alive}.cd34.tmp",            # a live run writing into the same folder
              f".last.pt.other-host.{dead}.ef56.tmp",          # another host of a shared file system
              ".last.pt.abc123.tmp",                           # no writer named: cannot tell whose it is
              ".user_notes.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"partial")
    CheckpointManager(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)


def _draws():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [float(np.random.standard_normal())],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second gaussian in python's state
    np.random.standard_normal()  # and in NumPy's
    state = capture_rng_state()
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    expected = _draws()

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    restore_rng_state(loaded)
    assert _draws() == expected


def test_resume_from_checkpoint_reproduces_uninterrupted_training(tmp_path):
    """model + optimizer + scheduler + RNG through CheckpointManager: resumed run == uninterrupted run."""
    from detector.engine.lr_schedule import WarmupMultiStepLR
    from detector.engine.optim import build_optimizer

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
        optimizer = build_optimizer(model, lr=0.1, weight_decay=1e-4, no_decay_norm_bias=True)
        scheduler = WarmupMultiStepLR(optimizer, milestones=[6], warmup_iters=4)
        return model, optimizer, scheduler

    def train(model, optimizer, scheduler, num_iters):
        for _ in range(num_iters):
            x = torch.randn(8, 4) + float(np.random.rand()) + random.random()  # all three RNGs in play
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    model, optimizer, scheduler = make()
    train(model, optimizer, scheduler, 5)
    manager = CheckpointManager(tmp_path)
    manager.save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "iteration": 5, "rng": capture_rng_state(),
    }, iteration=5)
    train(model, optimizer, scheduler, 5)
    expected = [p.detach().clone() for p in model.parameters()]

    resumed_model, resumed_optimizer, resumed_scheduler = make()
    state = load_checkpoint(manager.latest())
    load_model_state(resumed_model, state["model"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed_scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    assert resumed_scheduler.last_epoch == state["iteration"] == 5
    train(resumed_model, resumed_optimizer, resumed_scheduler, 5)
    for got, want in zip(resumed_model.parameters(), expected):
        assert torch.equal(got, want)
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
