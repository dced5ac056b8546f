"""Distributed training on the CPU (gloo): DDP gradients, sharded evaluation, agreed stops, torchrun end to end.

One 2-process group (torch.multiprocessing.spawn, torchrun's environment variables) runs three checks and
writes its results; the tests compare them with the same work done by this single process:

(a) the first step's averaged gradients equal a 1-process step on the concatenated batch. The backbone uses
    frozen BatchNorm and the head GroupNorm: with plain BatchNorm each process would normalise its own
    half-batch with its own statistics, which differs from the full batch by construction (SyncBatchNorm
    fixes that on CUDA; torch has no CPU SyncBatchNorm kernel). The positives normaliser is averaged over
    processes by the heads, so the per-rank losses' gradients, averaged by DDP, are the full batch's.
(b) 1-process and 2-process evaluation give identical metrics (contiguous shards of 4 + 3 images, no
    duplicates, gathered in rank order).
(c) when only rank 1 receives SIGTERM, both ranks stop after the same iteration and last.pt holds both
    ranks' RNG states.
(d) ``tools/train.py`` with a broken val file, which rank 0 alone checks before training: rank 0 prints one
    ``error:`` line, rank 1 exits with the same code in silence (no second report, no traceback, no hang).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detector.config import load_config
from detector.data.build import prepare_synthetic_data
from detector.engine.evaluate import evaluate_model
from detector.engine.trainer import Trainer, TrainingInterrupted
from detector.losses import EqualizedFocalLoss
from detector.models import build_model
from detector.runtime.checkpoint import load_checkpoint
from detector.runtime.distributed import destroy_distributed, reduce_loss_dict
from detector.runtime.model_state import unwrap_model
from detector.runtime.seeding import seed_everything

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"
WORLD_SIZE = 2


def tiny_opts(root: Path, *extra: str) -> list[str]:
    return [f"data.synthetic.root={root}", "data.synthetic.num_train=16", "data.synthetic.num_val=7",
            "data.synthetic.image_size=64", "data.synthetic.min_object_size=8", "data.synthetic.max_object_size=40",
            "data.synthetic.max_objects=3",
            f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.val.ann_file={root}/annotations/instances_val.json", f"data.val.img_dir={root}/val",
            "data.min_size=[48,56,64]", "data.max_size=64", "data.test_min_size=64", "data.test_max_size=64",
            "data.batch_size=4", "data.test_batch_size=1", "data.num_workers=0",
            "model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32",
            "schedule.iters=12", "schedule.steps=[6]", "schedule.warmup_iters=2", "runtime.log_interval=1",
            "runtime.eval_at_end=false", 'runtime.amp="off"', *extra]


def grad_opts(root: Path) -> list[str]:
    return tiny_opts(root, "model.backbone.norm=frozen_bn", "schedule.clip_grad_norm=null",
                     "model.loss_cls.type=equalized_focal")


def eval_opts(root: Path) -> list[str]:
    # batches of 1 image: 64 head channels, as GroupNorm(32) needs 2 values per group on the 1x1 P7 map
    return tiny_opts(root, "model.test.score_thr=0.0", "model.head.feat_channels=64")


def fixed_batch() -> tuple[torch.Tensor, list[dict]]:
    """4 images of one size (so that halves and the whole need the same padding) with 1-3 boxes each."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    targets = []
    for count in (1, 2, 3, 2):
        xy = torch.rand(count, 2, generator=generator) * 32
        wh = 8 + torch.rand(count, 2, generator=generator) * 24
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(0, 6, (count,), generator=generator)})
    return images, targets


def first_step(trainer: Trainer, images: torch.Tensor, targets: list[dict]) -> dict:
    step = trainer.train_step(images, targets)
    model = unwrap_model(trainer.model)
    efl = next(m for m in model.modules() if isinstance(m, EqualizedFocalLoss))
    return {"grads": {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None},
            "losses": reduce_loss_dict(step.losses), "pos_neg": efl.pos_neg.clone(), "pos_grad": efl.pos_grad.clone()}


def fresh_model(cfg):
    seed_everything(0)
    return build_model(cfg)


def _worker(rank: int, port: int, out_dir: str, root: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    out, root = Path(out_dir), Path(root)
    # (a) one step on this rank's half of the batch
    trainer = Trainer(load_config(CONFIG, grad_opts(root)), out / "grad", progress=False)
    images, targets = fixed_batch()
    half = slice(2 * rank, 2 * rank + 2)
    result = first_step(trainer, images[half], targets[half])
    if rank == 0:
        torch.save(result, out / "step.pt")
    del trainer
    # (b) evaluation of identical weights on two shards
    cfg = load_config(CONFIG, eval_opts(root))
    metrics = evaluate_model(cfg, fresh_model(cfg), torch.device("cpu"), progress=False)
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if isinstance(v, float)}))
    # torch's SyncBatchNorm has no CPU kernel: refused up front, on every rank alike (no hang)
    try:
        Trainer(load_config(CONFIG, tiny_opts(root, "model.backbone.norm=syncbn")), out / "sync", progress=False)
    except ValueError as error:
        (out / f"syncbn_{rank}.txt").write_text(str(error))
    # (c) SIGTERM on rank 1 only, before its second step
    trainer = Trainer(load_config(CONFIG, tiny_opts(root, "schedule.max_iters=6")), out / "stop", progress=False)
    train_step = trainer.train_step

    def signalled_step(images, targets):
        if rank == 1 and trainer.iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(images, targets)

    trainer.train_step = signalled_step
    try:
        trainer.fit()
        stopped = {"finished": trainer.iteration}
    except TrainingInterrupted as stop:
        stopped = {"iteration": stop.iteration, "signal": signal.Signals(stop.signum).name}
    (out / f"stop_{rank}.json").write_text(json.dumps(stopped))
    # (d) last: the tool's main() ends the process group
    spec = importlib.util.spec_from_file_location("focaldet_train_tool", ROOT / "tools" / "train.py")
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = train_tool.main([str(CONFIG), "--work-dir", str(out / "bad_val"), "--no-progress", "--opts",
                                *tiny_opts(root, f"data.val.ann_file={out / 'broken_val.json'}",
                                           "runtime.eval_at_end=true")])
    (out / f"bad_val_{rank}.json").write_text(json.dumps({"code": code, "stderr": stderr.getvalue()}))
    destroy_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "syn"
    prepare_synthetic_data(load_config(CONFIG, tiny_opts(root)))
    return root


@pytest.fixture(scope="module")
def two_processes(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    (out / "broken_val.json").write_text((data_root / "annotations" / "instances_val.json").read_text()[:-30])
    mp.spawn(_worker, args=(_free_port(), str(out), str(data_root)), nprocs=WORLD_SIZE, join=True)
    return out


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_process_step_equals_one_process_step_on_the_concatenated_batch(two_processes, data_root, tmp_path):
    trainer = Trainer(load_config(CONFIG, grad_opts(data_root)), tmp_path, progress=False)
    single = first_step(trainer, *fixed_batch())
    double = torch.load(two_processes / "step.pt", weights_only=True)
    assert single["grads"].keys() == double["grads"].keys() and len(single["grads"]) > 20
    for name, grad in single["grads"].items():
        torch.testing.assert_close(double["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    for name, value in single["losses"].items():  # the ranks' mean loss is the full batch's loss
        assert double["losses"][name] == pytest.approx(value, rel=1e-5), name
    # EFL's g_j = pos / neg from gradients summed over processes: the same as on the whole batch. (The sums
    # themselves are world_size times larger: each rank's loss is normalised by the mean, not the total,
    # number of positives, and DDP averages the parameter gradients, not these logit gradients.)
    torch.testing.assert_close(double["pos_neg"], single["pos_neg"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(double["pos_grad"], WORLD_SIZE * single["pos_grad"], rtol=1e-4, atol=1e-7)


def test_one_and_two_process_evaluation_give_identical_metrics(two_processes, data_root):
    cfg = load_config(CONFIG, eval_opts(data_root))
    metrics = evaluate_model(cfg, fresh_model(cfg), torch.device("cpu"), progress=False)
    single = {k: v for k, v in metrics.items() if isinstance(v, float)}
    assert single["AR100"] > 0  # the untrained model's detections do touch the objects
    assert json.loads((two_processes / "metrics.json").read_text()) == single


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_iteration(two_processes):
    stops = [json.loads((two_processes / f"stop_{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    assert stops == [{"iteration": 2, "signal": "SIGTERM"}] * WORLD_SIZE
    state = load_checkpoint(two_processes / "stop" / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and state["world_size"] == WORLD_SIZE
    assert len(state["rng"]) == WORLD_SIZE
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank's own stream


def test_bad_input_met_by_rank_0_is_reported_once_and_rank_1_exits_quietly(two_processes):
    rank_0, rank_1 = (json.loads((two_processes / f"bad_val_{rank}.json").read_text()) for rank in range(WORLD_SIZE))
    assert rank_0["code"] == rank_1["code"] == 1
    lines = rank_0["stderr"].strip().splitlines()
    assert lines[-1].startswith("error: ") and str(two_processes / "broken_val.json") in lines[-1], rank_0["stderr"]
    assert "Traceback" not in rank_0["stderr"] + rank_1["stderr"]
    assert "error" not in rank_1["stderr"].lower(), rank_1["stderr"]


def test_syncbn_on_cpu_processes_is_a_clear_error(two_processes):
    for rank in range(WORLD_SIZE):
        assert "model.backbone.norm=syncbn needs CUDA" in (two_processes / f"syncbn_{rank}.txt").read_text()


def test_a_finished_trainer_is_freed_without_a_garbage_collection(data_root, tmp_path):
    # A trainer in a reference cycle keeps its DistributedDataParallel model, and with it the process group, alive
    # until a collection that may come only at interpreter shutdown, where freeing gloo's group aborted a rank.
    trainer = Trainer(load_config(CONFIG, tiny_opts(data_root, "schedule.max_iters=1")), tmp_path, progress=False)
    trainer.fit()
    alive, model = weakref.ref(trainer), weakref.ref(trainer.model)
    gc.disable()
    try:
        del trainer
        assert alive() is None and model() is None
    finally:
        gc.enable()


def test_torchrun_quickstart_on_the_cpu(data_root, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    work_dir = tmp_path / "run"
    opts = eval_opts(data_root) + ["schedule.max_iters=4", "runtime.eval_at_end=true", "runtime.checkpoint_interval=2"]
    proc = subprocess.run([*launcher, "--standalone", "--nproc_per_node", "2", "tools/train.py", str(CONFIG),
                           "--work-dir", str(work_dir), "--no-progress", "--opts", *opts],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(work_dir / "checkpoints" / "last.pt")
    assert state["iteration"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "train/loss" in r] == [1, 2, 3, 4]  # rank 0 alone writes
    assert [r["iter"] for r in records if "val/AP" in r] == [4]
    assert proc.stdout.count("| AP50 |") == 1  # the table, printed by rank 0 only
