"""The README's "Train on your own data" example runs as written, from a checkout-like folder.

The test takes the section's bash block from README.md, runs it with bash in a fresh folder that holds only
links to the checkout's configs/, scripts/ and tools/ (so data/ and work_dirs/ start empty, as in a clean
checkout), with training cut to a few iterations, and checks what every step leaves behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TRAIN_COMMAND = "python tools/train.py data/example/example.yaml"
TRAIN_ITERS = 3


def walkthrough_script() -> str:
    """The first bash block of the README section "## Train on your own data"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Train on your own data\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start:end if end != -1 else len(readme)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks, "the section has no bash block"
    return blocks[0]


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    script = walkthrough_script()
    assert script.count(TRAIN_COMMAND) == 1
    script = script.replace(TRAIN_COMMAND, f"{TRAIN_COMMAND} --no-progress --opts schedule.max_iters={TRAIN_ITERS}")
    for name in ("configs", "scripts", "tools"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / "bin"  # `python` in the block is the interpreter running the tests
    bin_dir.mkdir()
    wrapper = bin_dir / "python"  # a script, not a link: a link to a venv's python would leave the venv
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = tmp_path / "data" / "example"
    assert (data / "labels" / "train" / "classes.txt").read_text().split() == ["circle", "square", "triangle"]
    for split, num_images in (("train", 48), ("val", 12)):
        converted = json.loads((data / f"{split}.json").read_text())
        original = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
        assert len(converted["images"]) == num_images
        assert [c["name"] for c in converted["categories"]] == ["circle", "square", "triangle"]
        assert len(converted["annotations"]) == len(original["annotations"])  # every box came back
    work_dir = tmp_path / "work_dirs" / "example"
    resolved = yaml.safe_load((work_dir / "config.yaml").read_text())
    assert resolved["model"]["num_classes"] == 3 and resolved["data"]["synthetic"]["enabled"] is False
    assert (work_dir / "checkpoints" / "last.pt").is_file()
    assert "synthetic generator is off" in proc.stderr
    # train's and eval's final metrics tables (AP in percent), one row of six numbers under each header
    assert proc.stdout.count("final evaluation (AP in percent") == 1 and proc.stdout.count("AP in percent") == 2
    assert len(re.findall(r"\| AP +\| AP50 +\| AP75 +\| APs +\| APm +\| APl +\|\n.*\n\|(?: [0-9.]+ +\|){6}",
                          proc.stdout)) >= 2
    assert "circle" in proc.stdout  # eval --per-class names the classes
    predictions = json.loads((work_dir / "predictions" / "predictions.json").read_text())
    assert len(predictions) == 12
    names = {d["class_name"] for p in predictions for d in p["detections"]}
    assert names <= {"circle", "square", "triangle"}
    assert len(list((work_dir / "predictions").rglob("*.jpg"))) == 12  # one drawn image per input
