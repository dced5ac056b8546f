"""Configs are found by path or, outside a clone, by their packaged name; the focaldet command dispatches to the
tools and answers --help without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import ConfigError, load_config
from detector.config_files import packaged_config_names, packaged_configs_dir, resolve_config_path

ROOT = Path(__file__).resolve().parents[1]


def test_the_packaged_configs_are_the_repository_configs():
    shipped = sorted(p.relative_to(packaged_configs_dir()).as_posix() for p in packaged_configs_dir().rglob("*.yaml"))
    in_repo = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert shipped == in_repo and "quickstart.yaml" in shipped
    assert "quickstart" in packaged_config_names() and not any("_base_" in n for n in packaged_config_names())


def test_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    expected = (packaged_configs_dir() / "quickstart.yaml").resolve()
    for name in ("quickstart", "quickstart.yaml", "configs/quickstart.yaml", "configs/quickstart"):
        assert resolve_config_path(name).resolve() == expected
    assert resolve_config_path("gfl/gfl_r50_fpn_1x_coco").name == "gfl_r50_fpn_1x_coco.yaml"
    assert load_config("quickstart") == load_config(ROOT / "configs" / "quickstart.yaml")


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("_base_: " + str(ROOT / "configs" / "quickstart.yaml") +
                                              "\nschedule:\n  lr: 0.5\n")
    assert resolve_config_path("quickstart.yaml") == Path("quickstart.yaml")
    assert load_config("quickstart.yaml").schedule.lr == 0.5
    assert load_config("quickstart").schedule.lr == 0.02  # the name without suffix is not that file


def test_an_unknown_name_says_both_places_were_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"not found: .*no_such_config \(nor a config shipped with focaldet"):
        load_config("no_such_config")


def test_the_focaldet_command_dispatches_without_importing_torch():
    code = ("import sys\nfrom detector.cli.main import main\ntry:\n    main(['train', '--help'])\n"
            "except SystemExit as stop:\n    assert stop.code == 0\n"
            "heavy = [m for m in ('torch', 'lvis', 'cv2', 'matplotlib', 'tensorboard') if m in sys.modules]\n"
            "print('heavy:', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--resume" in proc.stdout and "heavy: []" in proc.stdout
    unknown = subprocess.run([sys.executable, "-m", "detector.cli.main", "trian"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr and "train" in unknown.stderr
