"""Pre-emption: SIGTERM / SIGINT finish the step, write last.pt and exit cleanly; the run resumes exactly.

The 2-process case (all ranks stop at the same iteration when only one is signalled) is in test_ddp.py.
"""

from __future__ import annotations

import json
import re
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_whole_process_group_with_loader_workers_checkpoints_the_last_step(tmp_path, signum):
    """What SLURM's scancel, pre-emption and Kubernetes do: the signal reaches the main process and its
    loader workers at once. The workers ignore it and keep serving batches until the main process has finished
    its step and written last.pt; then everything exits, workers included."""
    root = tmp_path / "syn"
    opts = tiny_opts(root, "schedule.iters=100000", "schedule.steps=[]", "data.num_workers=2")
    prepare_synthetic_data(load_config(CONFIG, opts))
    proc = subprocess.Popen([sys.executable, "tools/train.py", str(CONFIG), "--work-dir", str(tmp_path / "run"),
                             "--no-progress", "--opts", *opts], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while max(logged_iterations(tmp_path / "run"), default=0) < 3:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no training progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signum)  # the process group: the main process and its 2 loader workers
    _, stderr = proc.communicate(timeout=300)
    name = signal.Signals(signum).name
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    stopped_at = load_checkpoint(last)["iteration"]
    assert stopped_at >= 3
    assert stderr.strip().splitlines()[-1] == (f"stopped by {name} after iteration {stopped_at}; checkpoint {last}; "
                                               "continue with --resume")
    assert max(logged_iterations(tmp_path / "run")) <= stopped_at
    time.sleep(1.0)
    with pytest.raises(ProcessLookupError):  # no worker outlived the run
        os.killpg(proc.pid, 0)


LOSS = r"\d+\.?\d*(?:e[-+]\d+)?"


def test_no_progress_log_lines_on_the_console_and_in_train_log(tmp_path):
    """Under nohup / SLURM (no terminal) every runtime.log_interval iterations one plain line; no progress bar;
    the final evaluation printed once, in percent."""
    root = tmp_path / "syn"
    opts = tiny_opts(root, "schedule.max_iters=4", "runtime.log_interval=2", "runtime.eval_at_end=true")
    prepare_synthetic_data(load_config(CONFIG, opts))
    proc = train_cli(tmp_path / "run", opts)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    line = re.compile(
        rf"iter (\d)/4 \| loss {LOSS} \(loss_cls {LOSS}, loss_box {LOSS}\) \| lr {LOSS} \| grad_norm {LOSS} \| "
        rf"time {LOSS} s/it, data {LOSS} s \| eta \d+:\d\d:\d\d \| max_mem \d+ MB \(rss\)$")
    console = [m.group(1) for m in map(line.search, stderr.splitlines()) if m]
    assert console == ["2", "4"], stderr
    log_file = (tmp_path / "run" / "train.log").read_text()
    assert [m.group(1) for m in map(line.search, log_file.splitlines()) if m] == ["2", "4"], log_file
    assert "\r" not in stderr and "it/s" not in stderr  # no tqdm bar without a terminal
    assert stdout.count("| AP50 |") == 1 and "final evaluation (AP in percent" in stdout
    assert "evaluation at iteration 4" not in stderr  # printed once: the table on stdout
    assert re.search(r"evaluation at iteration 4: AP \d+\.\d, AP50 \d+\.\d, .* \(percent\)", log_file)
