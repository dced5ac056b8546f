"""scripts/reproduce.py: one command per row, row configs that differ only in what their table varies (at full
scale and under the mini overlay), the paper / measured / difference table, skip-done and resume logic."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shlex
import sys
from pathlib import Path

import pytest

from detector.config import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reproduce = _load("reproduce")
tables = sys.modules["reproduce_tables"]
TABLES = tables.TABLES


def flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


# ------------------------------------------------------------------------------------------ the row configs
@pytest.mark.parametrize("mini", [False, True], ids=["full", "mini"])
@pytest.mark.parametrize("name", list(TABLES))
def test_rows_differ_only_in_the_varied_keys(name, mini, tmp_path):
    table = TABLES[name]
    configs = {}
    for row in table.rows:
        path = table.config(row)
        if mini:
            path = reproduce.write_mini_config(table, row, tmp_path / f"{row.name}.yaml")
        configs[row.name] = flatten(config_to_dict(load_config(path)))
    changed = set()
    for (a, cfg_a), (b, cfg_b) in itertools.combinations(configs.items(), 2):
        differ = {key for key in cfg_a if cfg_a[key] != cfg_b[key]}
        assert differ, f"{name}: rows {a} and {b} are the same experiment"
        assert differ <= set(table.varied), f"{name}: {a} vs {b} also differ in {differ - set(table.varied)}"
        changed |= differ
    assert changed == set(table.varied), f"{name}: declared varied keys never change: {set(table.varied) - changed}"


@pytest.mark.parametrize("name", list(TABLES))
def test_mini_overlay_keeps_the_row_setting_and_shrinks_the_rest(name, tmp_path):
    table = TABLES[name]
    for row in table.rows:
        full = flatten(config_to_dict(load_config(table.config(row))))
        mini = flatten(config_to_dict(load_config(reproduce.write_mini_config(table, row, tmp_path / "m.yaml"))))
        assert {key: mini[key] for key in table.varied} == {key: full[key] for key in table.varied}
        assert full["model.backbone.depth"] >= 50 and full["data.synthetic.enabled"] is False
        assert mini["model.backbone.depth"] == 18 and mini["model.backbone.weights"] is None
        assert mini["data.synthetic.enabled"] is True and mini["data.min_size"] == [160]
        assert mini["runtime.device"] == "cpu" and mini["schedule.iters"] <= 400
        assert mini["model.type"] == full["model.type"]
        assert mini["data.val.format"] == full["data.val.format"]


def test_full_rows_use_the_papers_settings():
    for name in ("retinanet_1a", "retinanet_1b", "retinanet_1c"):
        for row in TABLES[name].rows:
            cfg = load_config(TABLES[name].config(row))
            assert cfg.data.min_size == [600] and cfg.data.test_min_size == 600
            assert cfg.model.backbone.depth == 50 and cfg.model.type == "retinanet"
    k = {row.name: load_config(TABLES["atss_4"].config(row)).model.assigner.topk for row in TABLES["atss_4"].rows}
    assert sorted(k.values()) == list(range(3, 20, 2))
    cfg = load_config(TABLES["retinanet_1a"].config(TABLES["retinanet_1a"].row("alpha_0.999")))
    assert (cfg.model.loss_cls.gamma, cfg.model.loss_cls.alpha) == (0.0, 0.999)
    anchors = load_config(TABLES["retinanet_1c"].config(TABLES["retinanet_1c"].row("scales_2_ratios_3"))).model.anchors
    assert anchors.scales == pytest.approx([1.0, 2 ** 0.5]) and anchors.ratios == [0.5, 1.0, 2.0]
    gfl = {row.name: load_config(TABLES["gfl"].config(row)).model for row in TABLES["gfl"].rows}
    assert gfl["fl_dfl"].loss_cls.type == "focal" and gfl["qfl_giou"].loss_box.type == "giou"
    assert (gfl["fl_giou"].loss_cls.type, gfl["fl_giou"].loss_box.type) == ("focal", "giou")
    assert sorted(m.head.reg_max for m in gfl.values()) == [4, 8, 12, 16, 16, 16, 16, 20]
    efl = {row.name: load_config(TABLES["efl"].config(row)) for row in TABLES["efl"].rows}
    assert efl["fl"].model.loss_cls.type == "focal" and efl["efl"].model.loss_cls.type == "equalized_focal"
    assert efl["efl"].data.val.format == "lvis"


def test_paper_values_agree_where_tables_share_an_experiment():
    # Table 1a's alpha 0.75 is 1b's gamma 0 row; 1b's gamma 2 / alpha 0.25 is 1c's 3 x 3 anchors.
    ap = {(t, r.name): r.paper["AP"] for t in TABLES for r in TABLES[t].rows}
    assert ap["retinanet_1a", "alpha_0.75"] == ap["retinanet_1b", "gamma_0_alpha_0.75"] == 31.1
    assert ap["retinanet_1b", "gamma_2_alpha_0.25"] == ap["retinanet_1c", "scales_3_ratios_3"] == 34.0
    assert ap["atss_4", "k_9"] == 39.3 and ap["gfl", "qfl_dfl"] == 40.2
    assert ap["gfl", "fl_dfl"] is None and all(v is None for v in TABLES["efl"].row("fl").paper.values())


# ------------------------------------------------------------------------------------------------ dry run
@pytest.mark.parametrize("mini", [False, True], ids=["full", "mini"])
def test_dry_run_lists_one_command_per_row(mini, tmp_path, capsys):
    root = tmp_path / "root"
    assert reproduce.main(["all", "--dry-run", "--work-root", str(root), *(["--mini"] if mini else [])]) == 0
    listed = commands(capsys.readouterr().out)
    expected = [(t, row) for t in TABLES.values() for row in t.rows]
    assert len(listed) == len(expected)
    for command, (table, row) in zip(listed, expected):
        assert command[command.index("--work-dir") + 1] == str(root / table.name / row.name)
        assert "--resume" not in command
        if mini:
            assert command[:2] == [sys.executable, "tools/train.py"]
            assert command[2] == str(root / table.name / "mini_configs" / f"{row.name}.yaml")
        else:
            assert Path(command[0]).name == "torchrun" and command[1:3] == ["--nproc_per_node", "8"]
            assert command[4] == f"configs/reproduce/{table.name}/{row.name}.yaml"
    assert not any(p.name == "checkpoints" for p in root.rglob("*"))  # nothing ran


def test_dry_run_with_seeds_and_launcher(tmp_path, capsys):
    reproduce.main(["efl", "--dry-run", "--work-root", str(tmp_path), "--seeds", "0", "1", "--launcher", "torchrun",
                    "--gpus", "2", "--opts", "schedule.max_iters=5"])
    listed = commands(capsys.readouterr().out)
    assert [c[c.index("--work-dir") + 1] for c in listed] == [
        str(tmp_path / "efl" / n) for n in ("fl_s0", "fl_s1", "efl_s0", "efl_s1")]
    assert all(c[1:3] == ["--nproc_per_node", "2"] for c in listed)
    assert listed[1][-3:] == ["--opts", "runtime.seed=1", "schedule.max_iters=5"]


def test_unknown_row_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="table gfl has no row 'qfl_dfl_reg_max_16'; rows: fl_dfl, qfl_dfl"):
        reproduce.main(["gfl", "--dry-run", "--work-root", str(tmp_path), "--rows", "qfl_dfl_reg_max_16"])


def test_opts_may_not_override_a_varied_key(tmp_path):
    with pytest.raises(SystemExit, match="model.loss_cls.alpha"):
        reproduce.main(["retinanet_1a", "--dry-run", "--work-root", str(tmp_path),
                        "--opts", "model.loss_cls.alpha=0.5"])


# ------------------------------------------------------------------------------------------ table format
def test_format_table_paper_measured_difference_unconfirmed():
    Row, Result = tables.Row, reproduce.Result
    table = tables.Table(name="t", title="T", source="a paper", mini_overlay="x.yaml", varied=("a",),
                         rows=(Row("r1", "one", {"AP": 34.0}), Row("r2", "two", {"AP": None}),
                               Row("r3", "three", {"AP": 30.0}), Row("r4", "four", {"AP": 1.0})))
    results = {
        "r1": [Result(table.rows[0], None, "ran", {"AP": 0.331}, 47.0, cpu_seconds=90.0)],
        "r2": [Result(table.rows[1], 0, "done", {"AP": 0.30}, 100.0),
               Result(table.rows[1], 1, "done", {"AP": 0.32}, 110.0)],
        "r3": [Result(table.rows[2], None, "failed", None, 5.0, "exit 1, see x/train.log")],
    }  # r4 not run: left out
    text = reproduce.format_table(table, results)
    lines = [line for line in text.splitlines() if line.startswith("| ") and "| --- |" not in line]
    assert lines[0] == "| row | setting | paper AP | measured AP | Δ AP | time | CPU time |"
    assert lines[1] == "| `r1` | one | 34.0 | 33.1 | -0.9 | 47 s | 90 s |"
    assert lines[2] == "| `r2` | two | unconfirmed | 31.0 ± 1.4 | - | 3.5 min (earlier run) | - |"
    assert lines[3] == "| `r3` | three | 30.0 | failed (exit 1, see x/train.log) | - | 5 s | - |"
    assert len(lines) == 4 and "Total time: 4.4 min (CPU time 90 s" in text


def test_format_table_lvis_metrics_and_sign():
    table = TABLES["efl"]
    result = reproduce.Result(table.row("efl"), None, "resumed", {"AP": 0.30, "APr": 0.15, "APc": 0.27,
                                                                  "APf": 0.35}, 7300.0)
    text = reproduce.format_table(table, {"efl": [result]}, mini=True)
    assert "| `efl` | equalized focal loss (gamma_b 2, s 8) | 27.5 | 30.0 | +2.5 | 20.2 | 15.0 | -5.2 | " \
           "26.1 | 27.0 | +0.9 | 32.4 | 35.0 | +2.6 | 2.0 h (resumed) | - |" in text
    assert "mini" in text.splitlines()[0] and "trend" in text


# ---------------------------------------------------------------------------------- skip done and resume
def _fake_train(calls, exit_codes):
    """Stands in for subprocess.run: records the command, writes the metrics a finished run would."""
    def run(command, cwd, stdout, stderr):
        calls.append(command)
        work_dir = Path(command[command.index("--work-dir") + 1])
        code = exit_codes.get(work_dir.name, 0)
        if code == 0:
            with open(work_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"iter": 10, "train/loss": 1.0}) + "\n")
                f.write(json.dumps({"iter": 10, "val/AP": 0.25 + 0.01 * len(calls)}) + "\n")
        return type("Done", (), {"returncode": code})()
    return run


def test_skips_done_rows_resumes_half_done_and_reports_failures(tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    table = TABLES["atss_4"]
    done, half, broken = root / "atss_4" / "k_3", root / "atss_4" / "k_5", root / "atss_4" / "k_7"
    done.mkdir(parents=True)
    (done / "reproduce.json").write_text(json.dumps({"metrics": {"AP": 0.4}, "seconds": 12.0}))
    (half / "checkpoints").mkdir(parents=True)
    (half / "checkpoints" / "last.pt").write_bytes(b"")
    (half / "reproduce_partial.json").write_text(json.dumps({"seconds": 1000.0}))
    rows = ["k_3", "k_5", "k_7", "k_9"]

    reproduce.main(["atss_4", "--dry-run", "--work-root", str(root), "--rows", *rows])
    out = capsys.readouterr().out.splitlines()[1:]
    assert out[0].startswith("# done, skipped: ") and "--resume" in out[1] and "--resume" not in out[2] + out[3]

    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run", _fake_train(calls, {"k_7": 1}))
    assert reproduce.main(["atss_4", "--work-root", str(root), "--rows", *rows]) == 1  # k_7 failed
    ran = [Path(c[c.index("--work-dir") + 1]).name for c in calls]
    assert ran == ["k_5", "k_7", "k_9"]  # k_3 skipped, k_9 still ran after k_7 failed
    assert "--resume" in calls[0] and "--resume" not in calls[2]
    record = json.loads((half / "reproduce.json").read_text())
    assert record["metrics"] == {"AP": 0.26} and record["resumed"] and record["seconds"] >= 1000.0
    assert record["cpu_seconds"] >= 0 and not (half / "reproduce_partial.json").exists()
    assert not (broken / "reproduce.json").exists() and (broken / "reproduce_partial.json").exists()

    text = (root / "atss_4" / "table.md").read_text()
    assert "| `k_3` | k = 3 | 38.0 | 40.0 | +2.0 | 12 s (earlier run) | - |" in text
    assert "| `k_5` | k = 5 | 38.8 | 26.0 | -12.8 |" in text and "(resumed)" in text
    assert "| `k_7` | k = 7 | 39.1 | failed (exit 1, see " in text
    assert "| `k_9` | k = 9 | 39.3 | 28.0 | -11.3 |" in text
    assert text in capsys.readouterr().out

    calls.clear()  # a second pass runs only the failed row, which now resumes nothing (no last.pt)
    monkeypatch.setattr(reproduce.subprocess, "run", _fake_train(calls, {}))
    assert reproduce.main(["atss_4", "--work-root", str(root), "--rows", *rows]) == 0
    assert [Path(c[c.index("--work-dir") + 1]).name for c in calls] == ["k_7"]
