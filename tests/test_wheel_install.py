"""The built wheel works outside the clone: build it, install it into a fresh virtual environment (reusing this
environment's torch and other dependencies, no downloads), and from an empty folder run the console command:
``focaldet --help``, ``focaldet train --help``, then a tiny quick start named by its packaged config (``focaldet
train quickstart``), ``focaldet eval``, ``focaldet predict`` and ``focaldet export`` of its checkpoint, the ONNX
file run by onnxruntime. Marked ``packaging``: it runs with the suite (CI included); ``-m "not packaging"`` skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "configs", "detector"]
TINY = ["data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.image_size=64",
        "data.synthetic.min_object_size=12", "data.synthetic.max_object_size=40", "data.synthetic.max_objects=2",
        "data.min_size=[64]", "data.max_size=64", "data.test_min_size=64", "data.test_max_size=64",
        "data.batch_size=2", "data.test_batch_size=4", "schedule.iters=2", "schedule.steps=[1]",
        "schedule.warmup_iters=1", "model.head.num_convs=1", "runtime.log_interval=1"]


def run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment holding the wheel built from this checkout; its bin folder is returned."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves nothing in the checkout (detector/configs stays a link)
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
         source], tmp, env)
    wheel = next((tmp / "dist").glob("focaldet-*.whl"))
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", tmp / "venv"], tmp, env)
    python = tmp / "venv" / "bin" / "python"
    # --system-site-packages reaches the base interpreter's packages; when this test runs inside a virtual
    # environment its packages (torch, ...) are listed too: plain paths, so its .pth files (an editable
    # focaldet) are not run
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                       env).stdout.strip())
    parents = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (purelib / "parent_environment.pth").write_text("\n".join(sorted(parents)) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], tmp, env)
    return python.parent


def test_the_wheel_trains_evaluates_predicts_and_exports_outside_the_clone(venv, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"
    focaldet = venv / "focaldet"
    where = run([venv / "python", "-c", "import detector; print(detector.__file__)"], tmp_path, env).stdout
    assert Path(where.strip()).is_relative_to(venv.parent), where  # the installed copy, not the checkout
    assert "export" in run([focaldet, "--help"], tmp_path, env).stdout
    assert "--resume" in run([focaldet, "train", "--help"], tmp_path, env).stdout

    run([focaldet, "train", "quickstart", "--work-dir", "run", "--no-progress", "--opts", *TINY], tmp_path, env)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    assert checkpoint.is_file() and (tmp_path / "data" / "synthetic" / "val").is_dir()
    metrics = tmp_path / "metrics.json"
    run([focaldet, "eval", checkpoint, "--no-progress", "--metrics-out", metrics], tmp_path, env)
    assert "AP" in json.loads(metrics.read_text())
    images = sorted((tmp_path / "data" / "synthetic" / "val").iterdir())[:2]
    run([focaldet, "predict", checkpoint, *images, "--out-dir", "pred", "--no-draw", "--num-workers", "0",
         "--no-progress"], tmp_path, env)
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [Path(p["file_name"]).name for p in predictions] == [p.name for p in images]
    run([focaldet, "export", checkpoint, "--format", "onnx", "--out", "model.onnx", "--dynamic"], tmp_path, env)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert len(json.loads(meta["class_names"])) == 6 and meta["test_max_size"] == "64"
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "num_detections"]
