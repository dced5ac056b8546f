"""Failures during training lose no training and print no traceback at the user (issue 16's data-loss classes).

Each case runs ``tools/train.py``'s ``main(argv)`` in this process on test_bad_input's tiny dataset, with the
failure injected where it would happen: an error in the step after a forward pass (BatchNorm statistics already
changed), a second Ctrl-C inside a step, an error or a signal inside an evaluation, a full disk at the second
checkpoint. last.pt must then hold the last finished step exactly: its weights and buffers are compared with
those of a clean run of that many iterations (``runtime.deterministic``).
The signal cases with loader workers, which need a process group, are subprocess tests in
tests/engine/test_preemption.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time

import pytest
import torch

from detector.engine import trainer as trainer_module
from detector.runtime import checkpoint as checkpoint_module
from detector.runtime.checkpoint import load_checkpoint, save_checkpoint

from .test_bad_input import CONFIG
from .test_bad_input import data as bad_input_data  # noqa: F401 (a fixture)
from .test_bad_values import one_error_line, tool_main  # noqa: F401 (a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

DETERMINISTIC = ["runtime.deterministic=true", "runtime.eval_at_end=false", "runtime.log_interval=1"]


@pytest.fixture(scope="module")
def data(bad_input_data):
    return bad_input_data


def train(tool_main, data, work_dir, *opts, args=()):
    return tool_main("train", CONFIG, "--work-dir", work_dir, "--no-progress", *args,
                     "--opts", *data["opts"], *DETERMINISTIC, *opts)


@pytest.fixture(scope="module")
def three_steps(data, tmp_path_factory):
    """last.pt of a clean 3-iteration run."""
    from .test_bad_input import load_tool
    tool = load_tool("train")
    tool.start_logging = lambda rank=0: None
    work_dir = tmp_path_factory.mktemp("clean")
    assert tool.main([str(CONFIG), "--work-dir", str(work_dir), "--no-progress", "--opts", *data["opts"],
                      *DETERMINISTIC, "schedule.max_iters=3"]) == 0
    return load_checkpoint(work_dir / "checkpoints" / "last.pt")


def assert_same_training_state(saved: dict, expected: dict) -> None:
    assert saved["iteration"] == expected["iteration"]
    assert saved["scheduler"] == expected["scheduler"]
    assert saved["model"].keys() == expected["model"].keys()
    for key, value in expected["model"].items():  # weights and BatchNorm running statistics
        assert torch.equal(saved["model"][key], value), key


def in_training_forward(monkeypatch, step: int, action) -> None:
    """Run ``action()`` right after the training forward pass of step number ``step`` (1-based)."""
    build = trainer_module.build_training_model
    calls = [0]

    def build_with_hook(cfg, device, world_size):
        model = build(cfg, device, world_size)
        forward = model.forward

        def forward_then_act(*args, **kwargs):
            out = forward(*args, **kwargs)
            if model.training:
                calls[0] += 1
                if calls[0] == step:
                    action()
            return out

        model.forward = forward_then_act
        return model

    monkeypatch.setattr(trainer_module, "build_training_model", build_with_hook)


def test_an_error_inside_a_step_leaves_last_pt_at_the_last_finished_step(data, tmp_path, tool_main, monkeypatch,
                                                                        three_steps):
    def fail():
        raise RuntimeError("simulated failure inside step 4")

    in_training_forward(monkeypatch, 4, fail)
    with pytest.raises(RuntimeError, match="simulated failure inside step 4"):  # an unknown error keeps its type
        train(tool_main, data, tmp_path / "run", "schedule.max_iters=6")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert_same_training_state(state, three_steps)  # not the half-done step 4 (its BatchNorm update undone)


def test_a_second_ctrl_c_abandons_the_step_in_flight_and_exits_130(data, tmp_path, tool_main, monkeypatch,
                                                                   three_steps):
    def press_ctrl_c_twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt here, inside step 4

    in_training_forward(monkeypatch, 4, press_ctrl_c_twice)
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=6")
    assert code == 130 and "Traceback" not in stderr, stderr
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by a second SIGINT during the iteration 4, which was abandoned; checkpoint {last} holds "
        "iteration 3; continue with --resume")
    assert_same_training_state(load_checkpoint(last), three_steps)


def test_an_error_in_a_mid_run_evaluation_is_reported_after_a_checkpoint(data, tmp_path, tool_main, monkeypatch):
    def broken_evaluation(*args, **kwargs):
        raise ValueError("val.json: image id 3 has a box outside the image")

    monkeypatch.setattr(trainer_module, "evaluate_model", broken_evaluation)
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=4", "runtime.eval_interval=2")
    one_error_line(stderr, code, 1, "val.json: image id 3 has a box outside the image")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 2


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGHUP, 0)])
def test_a_signal_during_the_final_evaluation_stops_it_at_once(data, tmp_path, tool_main, monkeypatch, signum,
                                                               exit_code):
    def evaluation_that_is_signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(60)  # the signal ends the evaluation long before this does
        raise AssertionError("the signal did not stop the evaluation")

    monkeypatch.setattr(trainer_module, "evaluate_model", evaluation_that_is_signalled)
    start = time.monotonic()
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=2", "runtime.eval_at_end=true")
    assert time.monotonic() - start < 50
    assert code == exit_code and "Traceback" not in stderr, stderr
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by {signal.Signals(signum).name} during the final evaluation after iteration 2; checkpoint {last} "
        "holds iteration 2; training is complete, --resume runs the final evaluation; continue with --resume")
    assert load_checkpoint(last)["iteration"] == 2


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(data, tmp_path, tool_main, monkeypatch):
    real_save, saves = checkpoint_module.torch.save, [0]

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        saves[0] += 1
        if saves[0] >= 2:
            file.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_is_full)
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=4", "runtime.checkpoint_interval=1")
    folder = tmp_path / "run" / "checkpoints"
    one_error_line(stderr, code, 1, f"cannot write checkpoint {folder / 'iter_0000002.pt'}: No space left on device "
                                    f"(errno 28, ENOSPC); checkpoint {folder / 'last.pt'} holds iteration 1")
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_checkpoint(folder / "last.pt")["iteration"] == 1
    assert sorted(os.listdir(folder)) == ["iter_0000001.pt", "last.pt"]  # the partial file removed


def test_a_work_dir_that_cannot_be_written_stops_before_training(data, tmp_path, tool_main):
    (tmp_path / "file").write_text("x")
    code, stderr = train(tool_main, data, tmp_path / "file" / "run", "schedule.max_iters=1")
    one_error_line(stderr, code, 1, f"work dir {tmp_path / 'file' / 'run'} is not writable: Not a directory")


def test_a_new_run_over_a_checkpoint_is_refused_until_resume_or_overwrite(data, tmp_path, tool_main):
    work_dir = tmp_path / "run"
    assert train(tool_main, data, work_dir, "schedule.max_iters=1")[0] == 0
    first = (work_dir / "checkpoints" / "last.pt").read_bytes()
    code, stderr = train(tool_main, data, work_dir, "schedule.max_iters=1")
    one_error_line(stderr, code, 1, f"work dir {work_dir} already holds a training run (checkpoints/last.pt)",
                   "--resume", "--work-dir", "--overwrite")
    assert (work_dir / "checkpoints" / "last.pt").read_bytes() == first
    assert len((work_dir / "metrics.jsonl").read_text().splitlines()) == 1  # nothing appended
    assert train(tool_main, data, work_dir, "schedule.max_iters=2", args=["--resume"])[0] == 0
    assert load_checkpoint(work_dir / "checkpoints" / "last.pt")["iteration"] == 2
    assert train(tool_main, data, work_dir, "schedule.max_iters=1", args=["--overwrite"])[0] == 0
    assert load_checkpoint(work_dir / "checkpoints" / "last.pt")["iteration"] == 1
    assert [json.loads(line)["iter"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.parametrize("content", ["model", "bare"])
def test_resume_from_model_weights_only_says_how_to_start_from_them(data, tmp_path, tool_main, content):
    weights = load_checkpoint(data["checkpoint"])["model"]
    path = tmp_path / "weights.pt"
    save_checkpoint(path, {"model": weights} if content == "model" else weights)
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=1", args=["--resume", path])
    one_error_line(stderr, code, 1, f"--resume: {path} holds model weights only", f"model.init_checkpoint={path}")


def test_a_broken_val_file_stops_training_before_the_first_step(data, tmp_path, tool_main):
    broken = tmp_path / "val.json"
    broken.write_text(json.dumps(data["val"])[:-20])  # truncated
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=2", "runtime.eval_at_end=true",
                         f"data.val.ann_file={broken}")
    one_error_line(stderr, code, 1, broken)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_val_classes_unlike_the_training_classes_stop_training_before_the_first_step(data, tmp_path, tool_main):
    val = json.loads(json.dumps(data["val"]))
    val["categories"][1]["name"] = "renamed"
    path = tmp_path / "val.json"
    path.write_text(json.dumps(val))
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=2", "runtime.eval_interval=1",
                         f"data.val.ann_file={path}", "data.synthetic.enabled=false")
    one_error_line(stderr, code, 1, path, data["paths"]["train_ann_file"], "name different classes", "'renamed'")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_eval_out_that_cannot_be_written_fails_before_inference(data, tmp_path, tool_main, monkeypatch):
    from detector.engine import evaluate as evaluate_module

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before --out was checked")

    monkeypatch.setattr(evaluate_module, "run_inference", no_inference)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "results.json"
    code, stderr = tool_main("eval", CONFIG, data["checkpoint"], "--out", out, "--no-progress", "--opts",
                             *data["opts"])
    one_error_line(stderr, code, 1, f"--out {out} cannot be written: Not a directory")


def fixed_ap_evaluation(*args, **kwargs):
    return {"AP": 0.5}


def test_an_error_after_a_best_evaluation_keeps_ema_and_best_tracker_in_last_pt(data, tmp_path, tool_main,
                                                                                monkeypatch, three_steps):
    def fail():
        raise RuntimeError("simulated failure inside step 4")

    monkeypatch.setattr(trainer_module, "evaluate_model", fixed_ap_evaluation)
    in_training_forward(monkeypatch, 4, fail)
    with pytest.raises(RuntimeError, match="simulated failure inside step 4"):
        train(tool_main, data, tmp_path / "run", "schedule.max_iters=6", "runtime.eval_interval=2",
              "evaluation.save_best=AP", "runtime.ema.decay=0.5", "runtime.ema.warmup=0")
    folder = tmp_path / "run" / "checkpoints"
    state = load_checkpoint(folder / "last.pt")
    assert_same_training_state(state, three_steps)  # EMA and the tracker do not change the training itself
    assert state["ema"]["updates"] == 3  # one update per finished step, none for the failed one
    assert state["best"] == {"metric": "AP", "best_value": 0.5, "best_iteration": 2, "num_bad_evaluations": 0}
    best = load_checkpoint(folder / "best.pt")
    assert best["iteration"] == 2 and best["ema"]["updates"] == 2 and best["best"]["best_iteration"] == 2


def test_a_full_disk_at_best_pt_is_one_line_like_at_last_pt(data, tmp_path, tool_main, monkeypatch):
    real_save = checkpoint_module.torch.save

    def save_with_best_pt_failing(obj, file, *args, **kwargs):
        if os.path.basename(os.readlink(f"/proc/self/fd/{file.fileno()}")).startswith(".best.pt."):  # its temp file
            file.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_model", fixed_ap_evaluation)
    monkeypatch.setattr(checkpoint_module.torch, "save", save_with_best_pt_failing)
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=4", "runtime.eval_interval=2",
                         "evaluation.save_best=AP")
    folder = tmp_path / "run" / "checkpoints"
    one_error_line(stderr, code, 1, f"cannot write checkpoint {folder / 'best.pt'}: No space left on device "
                                    f"(errno 28, ENOSPC); checkpoint {folder / 'last.pt'} holds iteration 2")
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    state = load_checkpoint(folder / "last.pt")  # written before the evaluation: it records no best.pt
    assert state["iteration"] == 2 and state["best"]["best_iteration"] is None
    assert sorted(os.listdir(folder)) == ["last.pt"]  # the partial best.pt removed


def test_a_loader_worker_that_dies_after_a_stop_signal_still_ends_in_the_checkpoint(data, tmp_path, tool_main,
                                                                                   monkeypatch, three_steps):
    def terminated_with_the_workers():  # SIGTERM to the process group: a worker can go before the step ends
        os.kill(os.getpid(), signal.SIGTERM)
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")

    in_training_forward(monkeypatch, 4, terminated_with_the_workers)
    code, stderr = train(tool_main, data, tmp_path / "run", "schedule.max_iters=6")
    assert code == 0 and "Traceback" not in stderr, stderr
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by SIGTERM after iteration 3 (a data loader worker ended too); checkpoint {last} holds iteration "
        "3; continue with --resume")
    assert_same_training_state(load_checkpoint(last), three_steps)
