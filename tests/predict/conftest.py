"""A tiny quick-start RetinaNet trained once for the prediction tests (through tools/train.py, as a user does),
the ATSS and GFL quick starts trained the same way on the same data for the batching tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 64


def data_opts(root: Path) -> list[str]:
    return [f"data.synthetic.root={root}", "data.synthetic.num_train=16", "data.synthetic.num_val=9",
            f"data.synthetic.image_size={IMAGE_SIZE}", "data.synthetic.min_object_size=8",
            "data.synthetic.max_object_size=40", "data.synthetic.max_objects=3",
            f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.val.ann_file={root}/annotations/instances_val.json", f"data.val.img_dir={root}/val",
            f"data.min_size=[{IMAGE_SIZE}]", f"data.max_size={IMAGE_SIZE}", f"data.test_min_size={IMAGE_SIZE}",
            f"data.test_max_size={IMAGE_SIZE}", "data.num_workers=0", "data.batch_size=4", "data.test_batch_size=4"]


# 64 head channels: GroupNorm(32) needs 2 values per group on the 1 x 1 P7 map of one 64 px image
MODEL_OPTS = ["model.head.num_convs=1", "model.head.feat_channels=64", "model.neck.out_channels=32",
              "model.test.score_thr=0.02", "schedule.max_iters=24", "schedule.warmup_iters=4", "schedule.lr=0.02",
              "runtime.amp='off'", "runtime.channels_last=false", "runtime.eval_at_end=false", "runtime.log_interval=4"]


def run_tool(*args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root; one torch thread (on a shared 2-core machine spinning OpenMP
    threads made the tiny training 10x slower)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Trained:
    root: Path          # the test's temporary folder
    work_dir: Path      # the training run's folder (config.yaml, checkpoints/last.pt)
    checkpoint: Path
    config: Path
    data_opts: list[str]


def train_tiny(config: str, root: Path, work_dir: Path) -> Trained:
    """Train ``config`` for 24 iterations on the synthetic set under ``root / "syn"`` (made on first use)."""
    opts = data_opts(root / "syn")
    run_tool("tools/train.py", config, "--work-dir", work_dir, "--no-progress", "--opts", *opts, *MODEL_OPTS)
    return Trained(root, work_dir, work_dir / "checkpoints" / "last.pt", work_dir / "config.yaml", opts)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("predict")
    return train_tiny("configs/quickstart.yaml", root, root / "run")


HEAD_CONFIGS = {"retinanet": "configs/quickstart.yaml", "atss": "configs/quickstart_atss.yaml",
                "gfl": "configs/quickstart_gfl.yaml"}


@pytest.fixture(scope="session")
def trained_heads(trained) -> dict[str, Trained]:
    """Filled on first use: the RetinaNet above, and ATSS and GFL quick starts trained on its data."""
    return {"retinanet": trained}


@pytest.fixture(params=sorted(HEAD_CONFIGS))
def trained_head(request, trained_heads, trained) -> Trained:
    name = request.param
    if name not in trained_heads:  # once per session, whichever test asks first
        trained_heads[name] = train_tiny(HEAD_CONFIGS[name], trained.root, trained.root / f"run_{name}")
    return trained_heads[name]


@pytest.fixture(scope="module")
def det(trained):
    """The quick-start model of ``trained`` as a Detector on the CPU (one per test module)."""
    from detector.predict import Detector
    return Detector.from_checkpoint(trained.checkpoint, device="cpu")
