"""Ctrl-C where a tool does not handle it itself (while torch loads, before run_tool starts) ends as one line and
exit code 130, as inside run_tool, not as a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli.args import interruptible

ROOT = Path(__file__).resolve().parents[2]

# Runs first in the tool's process: the import of torch (the first thing a tool's main does after parsing its
# arguments, and the slowest) is where Ctrl-C lands, as when it is pressed in the first seconds of a run.
CTRL_C_WHILE_TORCH_LOADS = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize("tool, args", [("train", ["configs/quickstart.yaml"]),
                                        ("eval", ["configs/quickstart.yaml", "missing.pt"]),
                                        ("predict", ["missing.pt", "photos/", "--out-dir", "out/"])])
def test_ctrl_c_while_torch_loads_is_one_line_and_exit_130(tool, args):
    argv = [f"tools/{tool}.py", *args]
    code = (f"{CTRL_C_WHILE_TORCH_LOADS}\nimport runpy\nsys.argv = {argv!r}\n"
            f"runpy.run_path({argv[0]!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr == "interrupted (Ctrl-C)\n", proc.stderr


def test_other_ranks_stay_silent_and_other_exits_pass_through(monkeypatch, capsys):
    def pressed(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setenv("RANK", "1")
    assert interruptible(pressed)([]) == 130
    assert capsys.readouterr().err == ""
    assert interruptible(lambda argv=None: 7)() == 7
    with pytest.raises(SystemExit):
        interruptible(lambda argv=None: sys.exit(2))()
