"""Bad values through tools/train.py and tools/eval.py: what used to load and give wrong numbers, or end in a
traceback, now stops with one `error:` line naming the file, key or id (exit 2 for configs, 1 for data,
checkpoints and the machine), and what users write that way (1e-3) works.

One case of each kind runs the tool as a subprocess (what users see: exit code and stderr); variants call
the same `main(argv)` in-process. The library-side tests are in tests/test_config_values.py,
tests/data/test_bad_annotations.py, tests/evaluation/test_ground_truth.py, tests/runtime/test_device.py,
tests/runtime/test_model_state.py and tests/engine/test_optim.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import load_config
from detector.engine.optim import build_optimizer
from detector.models import build_model
from detector.runtime.checkpoint import save_checkpoint

from .test_bad_input import CONFIG, ROOT, load_tool
from .test_bad_input import data as bad_input_data  # noqa: F401 (a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")


def run(*args, python_prefix: str | None = None) -> subprocess.CompletedProcess:
    """A tool as a subprocess; ``python_prefix`` runs first in that process (e.g. to fake a machine)."""
    command = [sys.executable, *map(str, args)]
    if python_prefix is not None:
        tool, argv = str(args[0]), [str(a) for a in args]
        command = [sys.executable, "-c", f"{python_prefix}\nimport runpy, sys\nsys.argv = {argv!r}\n"
                                         f"runpy.run_path({tool!r}, run_name='__main__')"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def one_error_line(stderr: str, code: int, expected_code: int, *names) -> str:
    """The run exited with ``expected_code`` after exactly one line 'error: ...' naming every name, its last
    line, with no traceback; returns that line."""
    assert code == expected_code, f"exit code {code}, expected {expected_code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, f"a traceback instead of a clear error:\n{stderr}"
    lines = stderr.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one final 'error: ' line:\n{stderr}"
    for name in names:
        assert str(name) in errors[0], f"the error does not name {name!r}:\n{errors[0]}"
    return errors[0]


@pytest.fixture(scope="module")
def data(bad_input_data):
    """test_bad_input's tiny synthetic dataset and overrides, plus a results file of its val boxes."""
    results = bad_input_data["tmp"] / "perfect.json"
    results.write_text(json.dumps([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                    "score": 0.9} for a in bad_input_data["val"]["annotations"]]))
    return {**bad_input_data, "results": results}


@pytest.fixture
def tool_main(monkeypatch, capsys):
    """tools/<name>.py's main(argv) in this process -> (exit code, stderr)."""
    modules = {}

    def call(name, *argv):
        if name not in modules:
            modules[name] = load_tool(name)
            # main imports start_logging from detector.cli.common when it runs: keep pytest's logging as it is
            monkeypatch.setattr("detector.cli.common.start_logging", lambda rank=0: None)
        code = modules[name].main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return call


def write_val(data, tmp_path, change) -> Path:
    val = json.loads(json.dumps(data["val"]))
    change(val)
    path = tmp_path / "val.json"
    path.write_text(json.dumps(val))
    return path


# ---------------------------------------------------------------------- configs: exit 2
def test_train_duplicate_key_names_key_file_and_lines(data, tmp_path):
    config = tmp_path / "dup.yaml"
    config.write_text(f"_base_: {CONFIG}\nschedule:\n  lr: 0.01\n  warmup_iters: 0\n  lr: 0.1\n")
    proc = run("tools/train.py", config, "--work-dir", tmp_path / "run", "--opts", *data["opts"])
    one_error_line(proc.stderr, proc.returncode, 2, f"{config}, line 5: duplicate key 'schedule.lr' (first set at "
                                                    "line 3)")
    assert not (tmp_path / "run").exists()


def test_eval_non_finite_and_out_of_range_values_name_key_and_range(data, tool_main):
    proc = run("tools/eval.py", CONFIG, "--results", data["results"], "--opts", *data["opts"],
               "model.anchors.ratios=[0.5, .nan, 2]")
    one_error_line(proc.stderr, proc.returncode, 2, "'model.anchors.ratios[1]'",
                   "--opts model.anchors.ratios=[0.5, .nan, 2]", "must be a finite number, got nan")
    for override, expected in (("model.test.nms_iou=1.2", "model.test.nms_iou must be in [0, 1], got 1.2"),
                               ("model.test.topk_per_level=0", "model.test.topk_per_level must be >= 1, got 0"),
                               ("schedule.lr=-.inf", "'schedule.lr'"),
                               ("data.mean=[0.5, 0.5]", "data.mean needs one value per RGB channel (3 values)"),
                               ("data.std=[0.2, 0.0, 0.2]", "data.std must be > 0 for every channel")):
        code, err = tool_main("eval", CONFIG, "--results", data["results"], "--opts", *data["opts"], override)
        one_error_line(err, code, 2, expected)
    code, err = tool_main("train", CONFIG, "--opts", *data["opts"], "data.std=[1, 1]")
    one_error_line(err, code, 2, "'data.std' (set in --opts data.std=[1, 1])", "3 values")


def test_eval_binary_config_file_is_named(data, tmp_path):
    """A binary file named as a config is not YAML (exit 2); named as anything else it is read as a checkpoint
    (tools/eval.py CHECKPOINT --results), which it is not either (exit 1)."""
    config = tmp_path / "model.yaml"
    config.write_bytes(b"PK\x03\x04" + bytes(range(128, 256)))
    proc = run("tools/eval.py", config, "--results", data["results"])
    one_error_line(proc.stderr, proc.returncode, 2, config, "not a YAML config (not UTF-8 text")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(config.read_bytes())
    proc = run("tools/eval.py", checkpoint, "--results", data["results"])
    one_error_line(proc.stderr, proc.returncode, 1, checkpoint, "could not load checkpoint")


def test_exponent_floats_in_a_file_and_in_opts_are_floats(data, tmp_path):
    config = tmp_path / "sci.yaml"
    config.write_text(f"_base_: {CONFIG}\nschedule:\n  lr: 1e-3\n  weight_decay: 5e-5\n")
    metrics_file = tmp_path / "metrics.json"
    proc = run("tools/eval.py", config, "--results", data["results"], "--metrics-out", metrics_file,
               "--opts", *data["opts"], "model.test.score_thr=5e-2", "schedule.warmup_factor=1e-3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(metrics_file.read_text())["AP"] == pytest.approx(1.0, abs=1e-12)
    cfg = load_config(config, ["model.test.score_thr=5e-2", "schedule.warmup_factor=1e-3"])
    assert (cfg.schedule.lr, cfg.schedule.weight_decay, cfg.model.test.score_thr, cfg.schedule.warmup_factor) == \
        (0.001, 5e-5, 0.05, 0.001)


# ---------------------------------------------------------------------- the machine: exit 1
def test_train_on_cuda_without_a_gpu_names_the_key(data, tmp_path):
    proc = run("tools/train.py", CONFIG, "--work-dir", tmp_path / "run", "--no-progress", "--opts", *data["opts"],
               "runtime.device=cuda", python_prefix="import torch\ntorch.cuda.is_available = lambda: False")
    one_error_line(proc.stderr, proc.returncode, 1, "runtime.device is 'cuda' but CUDA is not available",
                   "set runtime.device=cpu or auto")


# ---------------------------------------------------------------------- ground truth: exit 1
def test_eval_duplicate_annotation_ids_and_negative_area_name_file_and_id(data, tmp_path, tool_main):
    first, second = data["val"]["annotations"][:2]

    def repeat_id(val):
        val["annotations"][1]["id"] = first["id"]

    ann_file = write_val(data, tmp_path, repeat_id)
    proc = run("tools/eval.py", CONFIG, "--results", data["results"], "--opts", *data["opts"],
               f"data.val.ann_file={ann_file}")
    one_error_line(proc.stderr, proc.returncode, 1, ann_file, f"annotation id {first['id']} appears twice",
                   f"image id {second['image_id']}")
    ann_file = write_val(data, tmp_path, lambda val: val["annotations"][1].update(area=-3.0))
    code, err = tool_main("eval", CONFIG, "--results", data["results"], "--opts", *data["opts"],
                          f"data.val.ann_file={ann_file}")
    one_error_line(err, code, 1, ann_file, f"annotation id {second['id']} (image id {second['image_id']}) has area "
                                           "-3.0; an area must be a finite number >= 0")


@pytest.mark.parametrize("backend", ["fast", "pycocotools"])
def test_eval_missing_area_names_file_and_id_under_both_backends(data, tmp_path, tool_main, backend):
    second = data["val"]["annotations"][1]
    ann_file = write_val(data, tmp_path, lambda val: val["annotations"][1].pop("area"))
    args = ("--opts", *data["opts"], f"data.val.ann_file={ann_file}", f"evaluation.coco_backend={backend}")
    expected = (ann_file, f"annotation id {second['id']} (image id {second['image_id']}) has no 'area'")
    if backend == "pycocotools":
        proc = run("tools/eval.py", CONFIG, "--results", data["results"], *args)
        one_error_line(proc.stderr, proc.returncode, 1, *expected)
    else:
        code, err = tool_main("eval", CONFIG, "--results", data["results"], *args)
        one_error_line(err, code, 1, *expected)


def test_eval_missing_iscrowd_gives_both_backends_the_same_numbers(data, tmp_path, tool_main):
    def drop_iscrowd(val):
        for ann in val["annotations"]:
            ann.pop("iscrowd", None)

    ann_file = write_val(data, tmp_path, drop_iscrowd)
    results = json.loads(data["results"].read_text())
    for index, result in enumerate(results):  # a mix of hits and misses with distinct scores
        result["score"] = 0.95 - 0.01 * index
        if index % 3 == 0:
            result["bbox"] = [result["bbox"][0] + result["bbox"][2] / 2, *result["bbox"][1:]]
    results_file = tmp_path / "dets.json"
    results_file.write_text(json.dumps(results))
    metrics = {}
    for backend in ("fast", "pycocotools"):
        out = tmp_path / f"{backend}.json"
        code, err = tool_main("eval", CONFIG, "--results", results_file, "--metrics-out", out, "--opts",
                              *data["opts"], f"data.val.ann_file={ann_file}", f"evaluation.coco_backend={backend}")
        assert code == 0, err
        metrics[backend] = json.loads(out.read_text())
    assert metrics["fast"] == metrics["pycocotools"]
    assert 0.1 < metrics["fast"]["AP"] < 0.95


def test_eval_checkpoint_stops_before_inference_when_the_val_file_lacks_areas(data, tmp_path, tool_main):
    first = data["val"]["annotations"][0]
    ann_file = write_val(data, tmp_path, lambda val: [ann.pop("area") for ann in val["annotations"]])
    checkpoint = tmp_path / "fits.pt"
    save_checkpoint(checkpoint, {"model": build_model(load_config(CONFIG, data["opts"])).state_dict()})
    code, err = tool_main("eval", CONFIG, checkpoint, "--no-progress", "--opts", *data["opts"],
                          f"data.val.ann_file={ann_file}")
    one_error_line(err, code, 1, ann_file, f"annotation id {first['id']} (image id {first['image_id']}) has no "
                                           f"'area' (and {len(data['val']['annotations']) - 1} more annotations)")


# ---------------------------------------------------------------------- results files: exit 1
def test_eval_boolean_scores_in_lvis_and_coco_results(data, tmp_path, tool_main):
    def as_lvis(val):
        for cat in val["categories"]:
            cat["frequency"] = "f"
        for img in val["images"]:
            img.update(neg_category_ids=[], not_exhaustive_category_ids=[])

    lvis_file = write_val(data, tmp_path, as_lvis)
    results = json.loads(data["results"].read_text())
    results[2]["score"] = True
    results_file = tmp_path / "dets.json"
    results_file.write_text(json.dumps(results))
    proc = run("tools/eval.py", CONFIG, "--results", results_file, "--opts", *data["opts"],
               f"data.val.ann_file={lvis_file}", "data.val.format=lvis")
    one_error_line(proc.stderr, proc.returncode, 1, f"results file {results_file}: entry 2 has score True, expected "
                                                    "a finite number")
    code, err = tool_main("eval", CONFIG, "--results", results_file, "--opts", *data["opts"])
    one_error_line(err, code, 1, f"results file {results_file}: entry 2 has score True")


# ---------------------------------------------------------------------- training data and checkpoints: exit 1
def test_train_empty_training_set_names_its_annotation_file(data, tmp_path):
    train = json.loads(Path(data["paths"]["train_ann_file"]).read_text())
    train["annotations"] = []
    ann_file = tmp_path / "train.json"
    ann_file.write_text(json.dumps(train))
    proc = run("tools/train.py", CONFIG, "--work-dir", tmp_path / "run", "--no-progress", "--opts", *data["opts"],
               f"data.train.ann_file={ann_file}", "data.train.filter_empty=true")
    one_error_line(proc.stderr, proc.returncode, 1, f"{ann_file}: the training set is empty: none of its "
                                                    f"{len(train['images'])} images has a non-crowd box",
                   "data.train.filter_empty=true")


def test_train_resume_from_a_gfl_checkpoint_into_retinanet_names_both(data, tmp_path):
    gfl_config = ROOT / "configs" / "quickstart_gfl.yaml"
    checkpoint = tmp_path / "gfl.pt"
    save_checkpoint(checkpoint, {"model": build_model(load_config(gfl_config, data["opts"])).state_dict(),
                                 "iteration": 1})
    proc = run("tools/train.py", CONFIG, "--work-dir", tmp_path / "run", "--no-progress", "--resume", checkpoint,
               "--opts", *data["opts"])
    one_error_line(proc.stderr, proc.returncode, 1, "holds a gfl model", "retinanet", "head.box_bins",
                   "head.box_deltas")


def test_train_resume_with_another_parameter_grouping_names_the_groups(data, tmp_path):
    model = build_model(load_config(CONFIG, data["opts"]))
    optimizer = build_optimizer(model, lr=0.01, no_decay_norm_bias=False)
    checkpoint = tmp_path / "last.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 1})
    proc = run("tools/train.py", CONFIG, "--work-dir", tmp_path / "run", "--no-progress", "--resume", checkpoint,
               "--opts", *data["opts"], "schedule.no_decay_norm_bias=true")
    one_error_line(proc.stderr, proc.returncode, 1, f"checkpoint {checkpoint}", "parameter groups differ",
                   "saved decay (", "this run decay (", "no_decay (", "schedule.no_decay_norm_bias")
