"""scripts/recipe_table.py: the scaled schedule, which runs a row reads, and the table's paired arithmetic."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))  # recipe_table imports its sibling compare_configs
spec = importlib.util.spec_from_file_location("recipe_table", REPO / "scripts" / "recipe_table.py")
recipe_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe_table)


def test_the_schedule_keeps_the_quick_starts_proportions():
    assert recipe_table.schedule_opts(1300) == ["schedule.iters=1300", "schedule.steps=[1080,1250]"]
    assert recipe_table.schedule_opts(650) == ["schedule.iters=650", "schedule.steps=[540,625]"]


def test_every_recipe_config_exists():
    for name in recipe_table.RECIPES:
        assert (REPO / "configs" / "recipes" / f"quickstart_{name}.yaml").is_file(), name


def fake_runs(out: Path, seeds: list[int]) -> dict:
    """Finished runs and evaluations with AP = (row index + seed) / 100, so every cell is known by hand."""
    aps = {}
    for seed in seeds:
        for index, name in enumerate(recipe_table.RECIPES):
            run = out / f"quickstart_{name}_s{seed}"
            run.mkdir(parents=True)
            ap = (10 * index + seed) / 100
            record = {"iter": 650, "val/AP": ap, "val/AP50": 2 * ap, "val/AP75": ap / 2}
            (run / "metrics.jsonl").write_text(json.dumps({"iter": 1, "train/loss": 1.0}) + "\n" + json.dumps(record))
            aps[(name, seed)] = ap
        ema = out / f"quickstart_ema_s{seed}"
        for file, ap in (("eval_raw.json", 0.5 + seed / 100), ("eval_raw_tta0.json", 0.6 + 2 * seed / 100),
                         ("eval_raw_tta1.json", 0.7)):
            (ema / file).write_text(json.dumps({"AP": ap, "AP50": 2 * ap, "AP75": ap / 2}))
    return aps


def test_rows_read_the_right_runs_and_the_table_pairs_seeds(tmp_path):
    seeds = [0, 1, 2]
    aps = fake_runs(tmp_path, seeds)
    rows = recipe_table.collect(tmp_path, seeds)
    assert [m["AP"] for m in rows["quick start (SGD, steps)"]] == [0.5, 0.51, 0.52]  # the EMA run's raw weights
    assert [m["AP"] for m in rows["+ EMA"]] == [aps[("ema", s)] for s in seeds]  # its final (averaged) evaluation
    assert [m["AP"] for m in rows["AdamW + cosine + EMA + jitter"]] == [aps[("modern", s)] for s in seeds]
    table = recipe_table.format_table(rows, seeds).splitlines()
    baseline = next(line for line in table if line.startswith("| quick start"))
    assert baseline == "| quick start (SGD, steps) | 51.0 ± 1.0 | 102.0 ± 2.0 | 25.5 ± 0.5 |  |"
    # TTA flip: 60, 62, 64 against 50, 51, 52 -> differences 10, 11, 12
    flip = next(line for line in table if line.startswith("| + TTA flip |"))
    assert flip.endswith(f"| +11.0 ± {statistics.stdev([10, 11, 12]):.1f} |")
    # AdamW (index 1): 10, 11, 12 against 50, 51, 52 -> -40 every seed, no spread
    adamw = next(line for line in table if line.startswith("| + AdamW"))
    assert adamw == "| + AdamW | 11.0 ± 1.0 | 22.0 ± 2.0 | 5.5 ± 0.5 | -40.0 ± 0.0 |"


def test_a_run_without_a_final_evaluation_is_an_error(tmp_path):
    fake_runs(tmp_path, [0])
    (tmp_path / "quickstart_cosine_s0" / "metrics.jsonl").write_text(json.dumps({"iter": 1, "train/loss": 1.0}))
    with pytest.raises(SystemExit, match="quickstart_cosine_s0"):
        recipe_table.collect(tmp_path, [0])
