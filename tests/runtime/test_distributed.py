"""Tests for detector.runtime.distributed: single-process fallbacks and a real 2-process gloo group."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from detector.runtime import distributed as D

WORLD_SIZE = 2
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_single_process_fallbacks(no_torchrun_env):
    assert D.init_distributed() == (0, 1, 0)
    assert not D.is_distributed()
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
    D.barrier()
    x = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(x) is x and D.all_reduce_mean(x) is x
    reduced = D.reduce_loss_dict({"loss_cls": torch.tensor(0.5), "loss_box": 0.25})
    assert reduced == {"loss_cls": 0.5, "loss_box": 0.25}
    assert all(type(v) is float for v in reduced.values())
    assert D.reduce_loss_dict({}) == {}
    D.destroy_distributed()


def test_world_size_one_does_not_create_a_group(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert D.init_distributed() == (0, 1, 0)
    assert not D.is_distributed()


def test_missing_rendezvous_env_is_a_clear_error(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        D.init_distributed()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        D.init_distributed()


def test_reduce_loss_dict_rejects_non_scalars(no_torchrun_env):
    with pytest.raises(ValueError, match="loss_cls"):
        D.reduce_loss_dict({"loss_cls": torch.ones(2)})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One torchrun-like process: set the env torchrun would set, then exercise every helper."""
    os.environ.update({
        "RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE), "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })
    torch.set_num_threads(1)
    assert D.init_distributed() == (rank, WORLD_SIZE, rank)
    assert D.init_distributed() == (rank, WORLD_SIZE, rank)  # idempotent
    assert D.is_distributed() and torch.distributed.get_backend() == "gloo"
    assert D.get_rank() == rank and D.get_world_size() == WORLD_SIZE
    assert D.is_main_process() == (rank == 0)

    local = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])  # rank 0: [1, 10], rank 1: [2, 20]
    summed = D.all_reduce_sum(local)
    mean = D.all_reduce_mean(local)
    int_mean = D.all_reduce_mean(torch.tensor([rank], dtype=torch.int64))
    assert torch.equal(local, torch.tensor([float(rank + 1), 10.0 * (rank + 1)]))  # input untouched
    # Insertion order differs between ranks on purpose: keys are matched, not positions.
    items = [("loss_cls", torch.tensor(float(rank))), ("loss_box", 2.0 * rank + 1.0)]
    losses = D.reduce_loss_dict(dict(items if rank == 0 else reversed(items)))
    D.barrier()
    result = {
        "sum": summed.tolist(), "mean": mean.tolist(), "int_mean": int_mean.tolist(),
        "int_mean_dtype": str(int_mean.dtype), "losses": losses, "keys": list(losses),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump(result, file)
    D.destroy_distributed()
    assert not D.is_distributed()


def test_two_process_gloo_group(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for rank, result in enumerate(results):
        assert result["sum"] == [3.0, 30.0]
        assert result["mean"] == [1.5, 15.0]
        assert result["int_mean"] == [0.5] and result["int_mean_dtype"] == "torch.float32"
        assert result["losses"] == {"loss_cls": 0.5, "loss_box": 2.0}
        assert result["keys"] == (["loss_cls", "loss_box"] if rank == 0 else ["loss_box", "loss_cls"])
