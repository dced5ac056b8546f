"""The work dir: one run at a time (a lock released on exit and after a crash), no silent overwrite of another
run's checkpoints, and unwritable folders refused before any work."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from detector.runtime import work_dir as wd
from detector.runtime.work_dir import (OutputPathError, WorkDirError, WorkDirLock, check_output_file, claim_work_dir,
                                       probe_writable)

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from detector.runtime.work_dir import WorkDirLock
    lock = WorkDirLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    if sys.argv[2] == "hold":
        time.sleep(600)
    """)


def _holder(work_dir, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_dir), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_cannot_lock_a_work_dir_in_use_and_can_after_a_crash(tmp_path):
    holder = _holder(tmp_path, "hold")
    try:
        with pytest.raises(WorkDirError, match=rf"in use by another training run \(pid {holder.pid} host"):
            WorkDirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no release
        holder.wait()
    lock = WorkDirLock(tmp_path)
    lock.acquire()  # the kernel dropped the dead holder's lock
    assert lock.held and (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    lock.release()


def test_the_lock_is_released_when_its_process_exits_and_by_release(tmp_path):
    holder = _holder(tmp_path, "exit")
    assert holder.wait() == 0
    first = WorkDirLock(tmp_path)
    first.acquire()
    with pytest.raises(WorkDirError, match="in use"):
        WorkDirLock(tmp_path).acquire()
    first.release()
    second = WorkDirLock(tmp_path)
    second.acquire()
    second.release()


def test_without_flock_the_lock_file_is_the_lock_and_a_dead_holder_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(wd, "fcntl", None)  # as on a file system without flock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{dead.pid} host {wd.socket.gethostname()} since 2026-01-01 00:00:00\n")
    lock = WorkDirLock(tmp_path)
    lock.acquire()  # stale: its process is gone
    with pytest.raises(WorkDirError, match=f"pid {os.getpid()} host"):
        WorkDirLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_a_new_run_in_a_work_dir_holding_checkpoints_is_refused_unless_resumed_or_overwritten(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkDirError, match=r"already holds a training run \(checkpoints/last.pt\): continue it "
                                           r"with --resume, train elsewhere with --work-dir DIR, or start afresh"):
        claim_work_dir(tmp_path, continuing=False, overwrite=False)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()  # nothing touched
    claim_work_dir(tmp_path, continuing=True, overwrite=False).release()
    claim_work_dir(tmp_path, continuing=False, overwrite=True).release()
    assert sorted(os.listdir(tmp_path)) == [".lock", "checkpoints", "notes.txt"]  # a fresh, empty checkpoints/
    assert os.listdir(tmp_path / "checkpoints") == []


def test_refused_claims_release_the_lock(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "iter_0000010.pt").write_bytes(b"x")
    with pytest.raises(WorkDirError, match="already holds"):
        claim_work_dir(tmp_path, continuing=False, overwrite=False)
    WorkDirLock(tmp_path).acquire()  # free again


def test_not_a_directory_work_dir_is_one_line(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(WorkDirError, match=f"^work dir {file} exists and is not a folder$"):
        probe_writable(file)
    with pytest.raises(WorkDirError, match=rf"^work dir {file}/run is not writable: Not a directory"):
        probe_writable(file / "run")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_full_read_only_or_forbidden_work_dir_is_refused_before_training(tmp_path, monkeypatch, code):
    real_open = open

    def refusing_open(path, *args, **kwargs):  # the file system refuses every new file, as a full disk would
        if ".write_probe." in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(WorkDirError, match=rf"^work dir {tmp_path} is not writable: {os.strerror(code)}"):
        probe_writable(tmp_path)
    assert os.listdir(tmp_path) == []  # no probe left behind


def test_check_output_file_refuses_folders_and_paths_under_files(tmp_path):
    with pytest.raises(OutputPathError, match=f"--out {tmp_path} is a folder"):
        check_output_file(tmp_path, "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="--out .*/file/results.json cannot be written"):
        check_output_file(tmp_path / "file" / "results.json", "--out")
    check_output_file(tmp_path / "new" / "results.json", "--out")
    assert os.listdir(tmp_path / "new") == []  # the probe is gone, the folder stays for the results
