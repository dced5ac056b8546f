"""Pre-emption: SIGTERM / SIGINT finish the step, write last.pt and exit cleanly; the run resumes exactly.

The 2-process case (all ranks stop at the same iteration when only one is signalled) is in test_ddp.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.data.build import prepare_synthetic_data
from detector.engine.stopping import StopSignal
from detector.runtime.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"
ITERS = 10
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_opts(root: Path, *extra: str) -> list[str]:
    return [f"data.synthetic.root={root}", "data.synthetic.num_train=16", "data.synthetic.num_val=8",
            "data.synthetic.image_size=64", "data.synthetic.min_object_size=8", "data.synthetic.max_object_size=40",
            "data.synthetic.max_objects=3",
            f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.val.ann_file={root}/annotations/instances_val.json", f"data.val.img_dir={root}/val",
            "data.min_size=[48,56,64]", "data.max_size=64", "data.test_min_size=64", "data.test_max_size=64",
            "data.batch_size=4", "data.test_batch_size=4", "data.num_workers=0",
            "model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32",
            "schedule.iters=12", "schedule.steps=[6]", "schedule.warmup_iters=2", "runtime.log_interval=1",
            "runtime.eval_at_end=false", 'runtime.amp="off"', "runtime.deterministic=true", *extra]


def test_stop_signal_records_the_first_signal_and_a_second_sigint_aborts():
    stop = StopSignal()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop.installed():
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # repeated: ignored
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal that is SIGINT: abort now
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def train_cli(work_dir: Path, opts: list[str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "tools/train.py", str(CONFIG), "--work-dir", str(work_dir),
                             "--no-progress", *args, "--opts", *opts], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def logged_iterations(work_dir: Path) -> list[int]:
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line)["iter"] for line in lines[:-1]]  # the last line may be half-written


def test_sigterm_mid_training_saves_a_loadable_checkpoint_and_resumes_to_the_uninterrupted_weights(tmp_path):
    root = tmp_path / "syn"
    opts = tiny_opts(root, f"schedule.max_iters={ITERS}")
    prepare_synthetic_data(load_config(CONFIG, opts))
    reference = train_cli(tmp_path / "reference", opts)  # runs alongside the interrupted one
    interrupted = train_cli(tmp_path / "run", opts)
    deadline = time.monotonic() + 300
    while max(logged_iterations(tmp_path / "run"), default=0) < 2:
        assert interrupted.poll() is None, interrupted.communicate()[1]
        assert time.monotonic() < deadline, "no training progress"
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGTERM)
    _, stderr = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 0, stderr
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")  # torch.load(weights_only=True)
    stopped_at = state["iteration"]
    assert 2 <= stopped_at < ITERS, "the run ended before the signal arrived"
    assert f"stopped by SIGTERM after iteration {stopped_at}" in stderr
    assert max(logged_iterations(tmp_path / "run")) <= stopped_at  # the step in flight finished, no further one

    resumed = train_cli(tmp_path / "run", opts, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / 'last.pt'} at iteration {stopped_at}" in stderr
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    expected = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")
    assert final["iteration"] == expected["iteration"] == ITERS
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
