"""Bad input through the command-line tools and the Python APIs behind them.

Every kind of bad input must end in one clear message that names the problem and where it is (file, key,
image id, annotation id, entry): exit code 2 for config errors, 1 for bad data / checkpoint / results files,
and no traceback. The tools run as subprocesses for one case of each kind (that is what users see: exit
code, stderr); the other cases call the same `main(argv)` in-process, which is cheaper than a new Python
process per case and checks the same code path (a traceback there would be an exception out of main).

The data-side API tests of the same inputs are in tests/data/test_bad_annotations.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.config import ConfigError, load_config
from detector.data.synthetic import ensure_synthetic_coco
from detector.evaluation import ResultsFormatError, load_results
from detector.evaluation.results import check_result_columns
from detector.models import build_model
from detector.runtime.checkpoint import CheckpointError, save_checkpoint
from detector.runtime.model_state import StateDictMismatchError, load_model_checkpoint, model_state_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quickstart.yaml"
SYNTHETIC = dict(num_train=8, num_val=4, image_size=64, num_classes=6, min_object_size=12, max_object_size=40,
                 max_objects=2, seed=0)
TINY_MODEL = ["model.head.num_convs=1", "model.head.feat_channels=32", "model.neck.out_channels=32",
              "runtime.amp='off'", "runtime.channels_last=false"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def load_tool(name: str):
    """The command behind tools/<name>.py (and ``focaldet <name>``), detector/cli/<name>.py."""
    return importlib.import_module(f"detector.cli.{name}")


def assert_clean_error(stderr: str, code: int, expected_code: int, *names) -> str:
    """The run failed with `expected_code`, printed an `error: ` message with every name and no traceback."""
    assert code == expected_code, f"exit code {code}, expected {expected_code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, f"a traceback instead of a clear error:\n{stderr}"
    message = stderr[stderr.index("error: "):] if "error: " in stderr else ""
    assert message, f"no 'error: ' line in stderr:\n{stderr}"
    for name in names:
        assert str(name) in message, f"the error does not name {name!r}:\n{message}"
    return message


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic dataset, the config overrides that use it, and a checkpoint that fits them."""
    tmp = tmp_path_factory.mktemp("bad_input")
    paths = ensure_synthetic_coco(str(tmp / "syn"), **SYNTHETIC)
    opts = [f"data.synthetic.root={paths['root']}", *(f"data.synthetic.{k}={v}" for k, v in SYNTHETIC.items()),
            f"data.train.ann_file={paths['train_ann_file']}", f"data.train.img_dir={paths['train_img_dir']}",
            f"data.val.ann_file={paths['val_ann_file']}", f"data.val.img_dir={paths['val_img_dir']}",
            "data.min_size=[64]", "data.max_size=64", "data.test_min_size=64", "data.test_max_size=64",
            "data.num_workers=0", "data.batch_size=4", "data.test_batch_size=4", *TINY_MODEL]
    checkpoint = tmp / "fits.pt"
    save_checkpoint(checkpoint, {"model": build_model(load_config(CONFIG, opts)).state_dict(), "iteration": 1})
    return {"tmp": tmp, "paths": paths, "opts": opts, "checkpoint": checkpoint,
            "val": json.loads(Path(paths["val_ann_file"]).read_text())}


@pytest.fixture(scope="module")
def eval_tool():
    return load_tool("eval")


@pytest.fixture
def eval_main(eval_tool, monkeypatch, capsys):
    """tools/eval.py's main(argv) in this process -> (exit code, stderr)."""
    # keep pytest's logging as it is (main imports start_logging from detector.cli.common when it runs)
    monkeypatch.setattr("detector.cli.common.start_logging", lambda rank=0: None)

    def call(*argv):
        code = eval_tool.main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return call


# ---------------------------------------------------------------------- 6. configs (exit 2)
def test_train_config_errors_exit_2_with_key_file_and_closest_key(data, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f"_base_: {CONFIG}\nmodel:\n  head:\n    num_conv: 1\n")
    proc = run("tools/train.py", config, "--work-dir", tmp_path / "run", "--opts", *data["opts"])
    assert_clean_error(proc.stderr, proc.returncode, 2, "'model.head.num_conv'", config,
                       "did you mean 'model.head.num_convs'")


def test_eval_config_errors_exit_2(data, tmp_path, eval_main):
    ckpt = data["checkpoint"]
    config = tmp_path / "typo.yaml"
    config.write_text(f"_base_: {CONFIG}\nschedul:\n  lr: 0.1\n")
    code, err = eval_main(config, ckpt)
    assert_clean_error(err, code, 2, "'schedul'", config, "did you mean 'schedule'")
    code, err = eval_main(CONFIG, ckpt, "--opts", "schedule.max_iters=abc")
    assert_clean_error(err, code, 2, "'schedule.max_iters'", "--opts schedule.max_iters=abc", "must be int | null",
                       "'abc'")
    config.write_text(f"_base_: {CONFIG}\nschedule:\n  max_iters: 0\n")
    code, err = eval_main(config, ckpt)
    assert_clean_error(err, code, 2, "'schedule.max_iters'", f"set in {config}", "must be >= 1, got 0")
    code, err = eval_main(CONFIG, ckpt, "--opts", "data.on_bad_image=ignore")
    assert_clean_error(err, code, 2, "'data.on_bad_image'", "'error' | 'skip'", "'ignore'")
    code, err = eval_main(tmp_path / "nope.yaml", ckpt)
    assert_clean_error(err, code, 2, "config file not found", tmp_path / "nope.yaml")
    config.write_text("_base_: missing_base.yaml\n")
    code, err = eval_main(config, ckpt)
    assert_clean_error(err, code, 2, config, "_base_ file not found", tmp_path / "missing_base.yaml")


def test_nested_base_files_are_named_as_the_source_of_a_bad_key(tmp_path):
    (tmp_path / "inner.yaml").write_text("model:\n  head:\n    num_conv: 3\n")
    (tmp_path / "mid.yaml").write_text("_base_: inner.yaml\nmodel:\n  num_classes: 6\n")
    (tmp_path / "top.yaml").write_text("_base_: mid.yaml\n")
    with pytest.raises(ConfigError, match=re.escape(f"'model.head.num_conv' in {tmp_path / 'inner.yaml'};")):
        load_config(tmp_path / "top.yaml")


# ---------------------------------------------------------------------- 5. checkpoints (exit 1)
def test_eval_checkpoint_of_another_config_lists_missing_unexpected_and_shapes(data):
    other = data["tmp"] / "other_config.pt"
    other_opts = data["opts"] + ["model.num_classes=3", "data.synthetic.num_classes=3", "model.head.num_convs=2"]
    save_checkpoint(other, {"model": build_model(load_config(CONFIG, other_opts)).state_dict()})
    proc = run("tools/eval.py", CONFIG, other, "--no-progress", "--opts", *data["opts"])
    message = assert_clean_error(proc.stderr, proc.returncode, 1, f"checkpoint {other}", "does not match",
                                 "unexpected keys", "shape mismatches", CONFIG)
    # the head's second tower conv is unexpected; the classifier has 3 * 9 outputs instead of 6 * 9
    assert re.search(r"unexpected keys \(6\): head\.cls_tower\.3\.weight, ", message)
    assert "head.cls_logits.weight: [27, 32, 3, 3] -> [54, 32, 3, 3]" in message


def test_checkpoint_with_missing_keys_is_listed_by_the_api(data):
    model = build_model(load_config(CONFIG, data["opts"]))
    state = dict(model.state_dict())
    missing = sorted(state)[:2]
    for key in missing:
        del state[key]
    path = data["tmp"] / "partial.pt"
    save_checkpoint(path, {"model": state})
    with pytest.raises(StateDictMismatchError) as info:
        load_model_checkpoint(model, path)
    assert info.value.missing_keys == missing and not info.value.unexpected_keys
    assert str(info.value).startswith(f"checkpoint {path}: state dict does not match")
    assert all(key in str(info.value) for key in missing)


@pytest.mark.parametrize("content, expected", [
    (b"\x00\x01garbage bytes", "is not a PyTorch checkpoint (torch.save writes a zip archive; this file starts"),
    (b'{"model": {}}', "is not a PyTorch checkpoint"),
    (b"", "is not a PyTorch checkpoint (torch.save writes a zip archive; this file is empty)"),
    ("no-model", "has no 'model' entry and is not a state dict of tensors (top-level keys: 'iteration')"),
    ("truncated", "could not load checkpoint"),
    (None, "checkpoint file not found"),
])
def test_eval_non_checkpoint_files_are_named(data, eval_main, tmp_path, content, expected):
    path = tmp_path / "weights.pt"
    if content == "no-model":
        save_checkpoint(path, {"iteration": 3})
    elif content == "truncated":
        path.write_bytes(data["checkpoint"].read_bytes()[:5000])
    elif content is not None:
        path.write_bytes(content)
    code, err = eval_main(CONFIG, path, "--no-progress", "--opts", *data["opts"])
    assert_clean_error(err, code, 1, path, expected)


def test_model_state_from_checkpoint_accepts_bare_state_dicts_and_rejects_non_tensors():
    weights = {"a": torch.zeros(2)}
    assert model_state_from_checkpoint({"model": weights, "iteration": 1}) is weights
    assert model_state_from_checkpoint(weights, "w.pt") is weights
    with pytest.raises(CheckpointError, match=r"checkpoint w\.pt: entry 'model' is not a state dict of tensors: 'b'"):
        model_state_from_checkpoint({"model": {"a": torch.zeros(1), "b": 3}}, "w.pt")
    with pytest.raises(CheckpointError, match=r"entry 'model' holds a list"):
        model_state_from_checkpoint({"model": [1]}, "w.pt")


# ---------------------------------------------------------------------- 7. results files (exit 1)
def results_from_gt(val: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in val["annotations"]]


def test_eval_results_entry_missing_a_key_names_file_and_entry(data, eval_main, tmp_path):
    results = results_from_gt(data["val"])
    del results[1]["score"]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    code, err = eval_main(CONFIG, "--results", path, "--opts", *data["opts"])
    assert_clean_error(err, code, 1, f"results file {path}: entry 1 is missing score", json.dumps(results[1]))


@pytest.mark.parametrize("case, expected", [
    ("not json", "is not valid JSON"),
    ("binary", "is not valid JSON (not UTF-8 text"),
    ("object", "top level is a JSON dict, expected a list of detections"),
    ("string entry", "entry 0 is a str, expected an object"),
    ("bbox of 3", "entry 0 has bbox [1, 2, 3], expected a list of 4 numbers"),
    ("nan score", "entry 0 has score nan, expected a finite number"),
    ("negative width", "entry 0 has bbox [1, 2, -3, 4]: coordinates must be finite, width and height >= 0"),
    ("string image id", "entry 0 has image_id '5', expected an integer"),
    ("unknown image", "image_id [999999] not in the ground truth (first at entry 2:"),
    ("unknown category", "category_id [4242] not in the categories (first at entry 0:"),
])
def test_eval_malformed_results_files_name_file_and_entry(data, eval_main, tmp_path, case, expected):
    results = results_from_gt(data["val"])
    first = results[0]
    path = tmp_path / "dets.json"
    text = {"not json": "[{]", "object": '{"image_id": 1}', "string entry": '["det"]'}.get(case)
    if case == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    elif text is not None:
        path.write_text(text)
    else:
        if case == "bbox of 3":
            first["bbox"] = [1, 2, 3]
        elif case == "nan score":
            first["score"] = float("nan")
        elif case == "negative width":
            first["bbox"] = [1, 2, -3, 4]
        elif case == "string image id":
            first["image_id"] = "5"
        elif case == "unknown image":
            results[2]["image_id"] = 999999
        elif case == "unknown category":
            first["category_id"] = 4242
        path.write_text(json.dumps(results))
    code, err = eval_main(CONFIG, "--results", path, "--opts", *data["opts"])
    assert_clean_error(err, code, 1, f"results file {path}", expected)


def test_columnar_results_get_the_same_value_checks(tmp_path):
    columns = {"bbox": np.array([[0, 0, 2, 2], [0, 0, np.inf, 1]], dtype=np.float64), "score": np.array([0.5, 0.4])}
    with pytest.raises(ResultsFormatError, match=r"dets\.json: entry 1 has bbox \[0\.0, 0\.0, inf, 1\.0\]"):
        check_result_columns(tmp_path / "dets.json", columns)
    columns["bbox"][1, 2] = 1.0
    check_result_columns(tmp_path / "dets.json", columns)
    (tmp_path / "ok.json").write_text(json.dumps([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 0, 0],
                                                    "score": 0}]))
    assert len(load_results(tmp_path / "ok.json", image_ids=[1], cat_ids=[2])) == 1


# ---------------------------------------------------------------------- 2-4. annotation files (exit 1)
def test_eval_lvis_file_given_as_coco_says_to_set_the_format(data, eval_main, tmp_path):
    val = dict(data["val"])
    val["categories"] = [dict(cat, frequency="f") for cat in val["categories"]]
    lvis_file = tmp_path / "lvis_v1_val.json"
    lvis_file.write_text(json.dumps(val))
    results = tmp_path / "dets.json"
    results.write_text("[]")
    code, err = eval_main(CONFIG, "--results", results, "--opts", *data["opts"], f"data.val.ann_file={lvis_file}")
    assert_clean_error(err, code, 1, lvis_file, "this is an LVIS file", "set data.train.format / data.val.format",
                       "to lvis")


def test_eval_bad_ground_truth_files_are_named(data, eval_main, tmp_path):
    results = tmp_path / "dets.json"
    results.write_text("[]")
    ann_file = tmp_path / "gt.json"

    def score(content):
        ann_file.write_text(content if isinstance(content, str) else json.dumps(content))
        return eval_main(CONFIG, "--results", results, "--opts", *data["opts"], f"data.val.ann_file={ann_file}")

    code, err = eval_main(CONFIG, "--results", results, "--opts", *data["opts"],
                          f"data.val.ann_file={tmp_path / 'missing.json'}")
    assert_clean_error(err, code, 1, "annotation file not found", tmp_path / "missing.json")
    code, err = score("not json at all")
    assert_clean_error(err, code, 1, ann_file, "not valid JSON")
    code, err = score([data["val"]])
    assert_clean_error(err, code, 1, ann_file, "top level is list, expected an object")
    code, err = score({"images": [], "categories": []})
    assert_clean_error(err, code, 1, ann_file, "missing key(s) ['annotations']")
    val = json.loads(json.dumps(data["val"]))
    bad = val["annotations"][1]
    bad["category_id"] = 77
    code, err = score(val)
    assert_clean_error(err, code, 1, ann_file, f"annotation id {bad['id']} (image id {bad['image_id']})",
                       "category_id 77, which is not in 'categories'")
    bad["category_id"] = val["categories"][0]["id"]
    bad["bbox"] = [1, float("nan"), 2, 2]
    code, err = score(val)
    assert_clean_error(err, code, 1, ann_file, f"annotation id {bad['id']} (image id {bad['image_id']})",
                       "non-finite bbox")
    bad["bbox"] = [1, 2, 3]
    code, err = score(val)
    assert_clean_error(err, code, 1, ann_file, f"annotation id {bad['id']} (image id {bad['image_id']})",
                       "malformed bbox [1, 2, 3]")
    # an LVIS run given a COCO file
    code, err = score(data["val"])
    code, err = eval_main(CONFIG, "--results", results, "--opts", *data["opts"], f"data.val.ann_file={ann_file}",
                          "data.val.format=lvis")
    assert_clean_error(err, code, 1, ann_file, "has frequency None", "looks like a COCO-format file", "to coco")


# ---------------------------------------------------------------------- 1. images
def copy_images(src: str, dst: Path, ann_file: str, bad: dict[str, str]) -> dict[int, Path]:
    """Copy an image folder, then make the images at the given positions of the annotation file missing
    ("missing") or corrupt ("truncated": half the file; "garbage": not an image). Returns {image id: path}."""
    shutil.copytree(src, dst)
    images = sorted(json.loads(Path(ann_file).read_text())["images"], key=lambda img: img["id"])
    broken = {}
    for position, kind in bad.items():
        img = images[int(position)]
        path = dst / img["file_name"]
        if kind == "missing":
            path.unlink()
        elif kind == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.write_bytes(b"garbage, not an image")
        broken[img["id"]] = path
    return broken


def test_eval_bad_image_in_a_loader_worker_stops_with_path_and_image_id(data, tmp_path):
    paths = data["paths"]
    ((image_id, path),) = copy_images(paths["val_img_dir"], tmp_path / "val", paths["val_ann_file"],
                                      {"1": "truncated"}).items()
    proc = run("tools/eval.py", CONFIG, data["checkpoint"], "--no-progress", "--opts", *data["opts"],
               f"data.val.img_dir={tmp_path / 'val'}", "data.num_workers=1")
    assert_clean_error(proc.stderr, proc.returncode, 1, f"cannot decode image {path} (image id {image_id})")


def test_train_skip_mode_skips_and_counts_bad_images_over_workers(data, tmp_path):
    paths = data["paths"]
    train = json.loads(Path(paths["train_ann_file"]).read_text())
    with_boxes = sorted({a["image_id"] for a in train["annotations"]})  # filter_empty keeps only these
    positions = [i for i, img in enumerate(sorted(train["images"], key=lambda img: img["id"]))
                 if img["id"] in with_boxes]
    broken = copy_images(paths["train_img_dir"], tmp_path / "train", paths["train_ann_file"],
                         {positions[1]: "missing", positions[4]: "garbage"})
    proc = run("tools/train.py", CONFIG, "--work-dir", tmp_path / "run", "--no-progress", "--opts", *data["opts"],
               f"data.train.img_dir={tmp_path / 'train'}", "data.on_bad_image=skip", "data.num_workers=2",
               "schedule.max_iters=2", "runtime.eval_at_end=false", "runtime.log_interval=1")
    assert proc.returncode == 0, proc.stderr
    skips = [line for line in proc.stderr.splitlines() if "on_bad_image=skip" in line and "WARNING" in line]
    for image_id, path in broken.items():
        assert any(f"{path} (image id {image_id})" in line for line in skips), proc.stderr
    counts = [tuple(map(int, re.search(r"(\d+) bad images, (\d+) skips so far", line).groups())) for line in skips]
    assert max(counts) == (2, 2), skips  # the running count covers both workers


# ---- tools/train.py: bad input stops with one clear line (exit 1) ----


def train_run(tmp_path, data, *opts):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), str(CONFIG), "--work-dir", str(tmp_path / "run"), "--no-progress",
                           "--opts", *data["opts"], "schedule.max_iters=1", "runtime.eval_at_end=false", *opts],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_train_missing_annotation_file(data, tmp_path):
    proc = train_run(tmp_path, data, f"data.train.ann_file={tmp_path / 'nope.json'}")
    assert_clean_error(proc.stderr, proc.returncode, 1, "annotation file not found", tmp_path / "nope.json")


def test_train_bad_image_in_a_worker(data, tmp_path):
    paths = data["paths"]
    train_json = json.loads(Path(paths["train_ann_file"]).read_text())
    with_boxes = {a["image_id"] for a in train_json["annotations"]}
    images = sorted(train_json["images"], key=lambda img: img["id"])
    broken = copy_images(paths["train_img_dir"], tmp_path / "train", paths["train_ann_file"],
                         {i: "truncated" for i, img in enumerate(images) if img["id"] in with_boxes})
    proc = train_run(tmp_path, data, f"data.train.img_dir={tmp_path / 'train'}", "data.num_workers=1")
    message = assert_clean_error(proc.stderr, proc.returncode, 1, "cannot decode image")
    assert any(f"{path} (image id {image_id})" in message for image_id, path in broken.items()), message


def test_train_num_classes_mismatch(data, tmp_path):
    proc = train_run(tmp_path, data, "model.num_classes=5", "data.synthetic.enabled=false")
    assert_clean_error(proc.stderr, proc.returncode, 1, data["paths"]["train_ann_file"], "6 categories",
                       "model.num_classes is 5")


def test_train_resume_from_a_non_checkpoint(data, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_text('{"not": "a checkpoint"}')
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), str(CONFIG), "--work-dir", str(tmp_path / "run"), "--no-progress",
                           "--resume", str(garbage), "--opts", *data["opts"], "schedule.max_iters=1",
                           "runtime.eval_at_end=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert_clean_error(proc.stderr, proc.returncode, 1, garbage, "is not a PyTorch checkpoint")
