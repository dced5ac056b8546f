"""LVIS through the command line: a tiny EFL run on synthetic long-tailed data, and --results scoring."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def lvis_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lvis")
    root = tmp / "syn"
    opts = [f"data.synthetic.root={root}", "data.synthetic.num_train=300", "data.synthetic.num_val=60",
            "data.synthetic.num_classes=12", "model.num_classes=12", "data.synthetic.num_rare=3",
            "data.synthetic.num_common=6", "data.synthetic.head_images=120", "data.synthetic.image_size=96",
            "data.synthetic.max_object_size=48", "data.min_size=[96]", "data.max_size=96", "data.test_min_size=96",
            "data.test_max_size=96", f"data.train.ann_file={root}/annotations/lvis_v1_train.json",
            f"data.train.img_dir={root}", f"data.val.ann_file={root}/annotations/lvis_v1_val.json",
            f"data.val.img_dir={root}", "data.num_workers=0", "schedule.max_iters=6", "runtime.log_interval=2",
            "model.head.num_convs=1"]
    work_dir = tmp / "run"
    proc = run("tools/train.py", "configs/quickstart_lvis_efl.yaml", "--work-dir", work_dir, "--no-progress",
               "--opts", *opts)
    return tmp, root, work_dir, opts, proc


def test_efl_run_reports_lvis_metrics_and_saves_statistics(lvis_run):
    _, _, work_dir, _, proc = lvis_run
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/APr" in r]
    assert val and {"val/AP", "val/APr", "val/APc", "val/APf"} <= set(val[-1])
    state = torch.load(work_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    pos = [v for k, v in state.items() if k.endswith("pos_grad")]
    neg = [v for k, v in state.items() if k.endswith("neg_grad")]
    assert pos and neg and pos[0].dtype == torch.float32 and pos[0].sum() > 0 and neg[0].sum() > 0


def test_eval_results_file_lvis(lvis_run):
    tmp, root, _, opts, _ = lvis_run
    gt = json.loads((root / "annotations" / "lvis_v1_val.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    (tmp / "perfect.json").write_text(json.dumps(perfect))
    out = tmp / "metrics.json"
    run("tools/eval.py", "configs/quickstart_lvis_efl.yaml", "--results", tmp / "perfect.json", "--metrics-out", out,
        "--opts", *opts)
    metrics = json.loads(out.read_text())
    for key in ("AP", "APr", "APc", "APf"):
        assert metrics[key] == pytest.approx(1.0), key
