"""scripts/kill_test.py's torchrun mode: which process groups a job has, and which tracebacks are torchrun's own."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("kill_test", REPO / "scripts" / "kill_test.py")
kill_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kill_test)

# a launcher (as torchrun) whose child runs in a session of its own, and a grandchild in the child's group
LAUNCHER = """
import subprocess, sys, time
worker = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
subprocess.Popen([sys.executable, "-c", worker], start_new_session=True)
time.sleep(60)
"""

TORCHRUN_REPORT = """Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1138, in main
    run(args)
  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/api.py", line 86, in handler
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)
torch.distributed.elastic.multiprocessing.api.SignalException: Process 123 got signal: 15
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_the_process_groups_of_a_job_include_a_child_in_a_session_of_its_own():
    job = subprocess.Popen([sys.executable, "-c", LAUNCHER], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(groups := kill_test.job_process_groups(job.pid)) < 2 or not has_grandchild(job.pid):
            assert time.monotonic() < deadline, "the launcher's processes did not start"
            time.sleep(0.05)
        child = int(Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()[0])
        assert groups == {job.pid, child}  # the grandchild is in its parent's group
    finally:
        kill_test.kill_groups(kill_test.job_process_groups(job.pid), signal.SIGKILL)
        job.wait()


def has_grandchild(pid: int) -> bool:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return bool(children) and bool(Path(f"/proc/{children[0]}/task/{children[0]}/children").read_text().split())


def test_only_torchruns_own_signal_report_is_tolerated():
    assert not kill_test.foreign_traceback("stopped by SIGTERM ...\n" + TORCHRUN_REPORT, torchrun=True)
    assert kill_test.foreign_traceback(TORCHRUN_REPORT, torchrun=False)  # a single process prints none
    rank_frame = f'Traceback (most recent call last):\n  File "{REPO / "tools" / "train.py"}", line 9\nRuntimeError\n'
    assert kill_test.foreign_traceback(rank_frame + TORCHRUN_REPORT, torchrun=True)  # two tracebacks
    assert kill_test.foreign_traceback(rank_frame, torchrun=True)
    assert kill_test.foreign_traceback(TORCHRUN_REPORT.replace("SignalException", "ChildFailedError"), torchrun=True)
    assert not kill_test.foreign_traceback("no traceback at all", torchrun=False)
