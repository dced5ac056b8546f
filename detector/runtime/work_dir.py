"""A training run's work dir: written to by one run at a time, never overwritten silently, checked before training.

* :class:`WorkDirLock`: ``<work_dir>/.lock``, held with ``fcntl.flock`` for the whole run and holding the
  holder's "pid host start-time". The kernel releases a flock when its process ends in any way (``kill -9``
  included), so a crashed run never leaves a lock behind; forked children (DataLoader workers) close their copy
  at once, so an orphaned worker cannot keep it either. Where the file system has no flock (some Lustre / NFS
  mounts say ENOSYS / ENOLCK), the file itself is the lock, created exclusively; it is stale, and taken over,
  when its process is not running on this host. A second run in the same work dir stops with the holder named.
* :func:`claim_work_dir`: the lock, then the refusal of a new run where checkpoints already are (``--resume``,
  ``--work-dir`` elsewhere or ``--overwrite``), or ``--overwrite``'s clean-up of :data:`RUN_OUTPUTS`.
* :func:`probe_writable`: a small file written, fsynced and removed, so that a read-only, full or
  not-a-directory work dir stops the run before its first step rather than at its first checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the lock file alone
    fcntl = None

__all__ = ["WorkDirError", "OutputPathError", "WorkDirLock", "RUN_OUTPUTS", "claim_work_dir", "probe_writable",
           "check_output_file", "existing_checkpoints"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# What a training run writes into its work dir, all of which --overwrite removes (anything else is kept).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "train.log", "tb", "eval_shards", "config.yaml")
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}
_HELD_FDS: set[int] = set()  # lock file descriptors of this process, closed in forked children


class OutputPathError(RuntimeError):
    """An output file or folder cannot be written."""


class WorkDirError(OutputPathError):
    """The work dir cannot take this run: unwritable, in use by another run, or holding a run's checkpoints."""


def _close_held_fds_in_child() -> None:
    for fd in _HELD_FDS:  # closing the child's copy leaves the parent's lock as it is (LOCK_UN would not)
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_fds_in_child)


def _describe(error: OSError) -> str:
    return f"{error.strerror or error} ({error.filename})" if error.filename else str(error.strerror or error)


def probe_writable(directory: str | os.PathLike) -> None:
    """Create ``directory`` (and parents) and write, fsync and remove a 4 KiB file in it.

    Raises WorkDirError in one line: a path under a regular file, a read-only file system, no permission, a
    full disk."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WorkDirError(f"work dir {directory} exists and is not a folder")
    probe = directory / f".write_probe.{socket.gethostname()}.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"\0" * 4096)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise WorkDirError(f"work dir {directory} is not writable: {_describe(error)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Fail now, not after hours of work, when the file ``path`` (given as ``option``) cannot be written: its
    folder is created and must take a new file; an existing ``path`` must be a file. Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file name")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:  # mkdir would only say "File exists"
        raise OutputPathError(f"{option} {path} cannot be written: Not a directory ({blocking} is a file)")
    probe = path.with_name(f".{path.name}.probe.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"\0")
    except OSError as error:
        raise OutputPathError(f"{option} {path} cannot be written: {_describe(error)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class WorkDirLock:
    """The exclusive right to train in ``work_dir`` (see the module docstring). ``acquire()`` raises
    WorkDirError naming the holder; ``release()`` (also on garbage collection) gives it back."""

    def __init__(self, work_dir: str | os.PathLike):
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / LOCK_NAME
        self._fd: int | None = None
        self._owns_file = False  # without flock: the file is the lock, removed on release

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        return ""

    def _in_use(self, holder: str) -> WorkDirError:
        who = f"pid {holder}" if holder else "another process"
        return WorkDirError(f"work dir {self.work_dir} is in use by another training run ({who}; lock {self.path}); "
                            "wait for it to end or train elsewhere with --work-dir")

    def acquire(self) -> None:
        if fcntl is None:
            self._acquire_as_file()
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._in_use(self._holder_text()) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in _NO_FLOCK:
                raise WorkDirError(f"cannot lock work dir {self.work_dir}: {_describe(error)}") from None
            self._acquire_as_file()
            return
        previous = self._holder_text()
        if previous:
            logger.info("work dir %s: taking over the lock of a run that ended without releasing it (%s)",
                        self.work_dir, previous)
        self._write_holder(fd)
        self._fd = fd
        _HELD_FDS.add(fd)

    def _write_holder(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        text = f"{os.getpid()} host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.write(fd, text.encode())
        os.fsync(fd)

    def _acquire_as_file(self) -> None:
        """No flock here: the lock is the file, created with O_EXCL; a holder not running on this host is stale."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder_text()
                fields = holder.split()
                stale = not fields or (len(fields) >= 3 and fields[0].isdigit() and fields[2] == socket.gethostname()
                                       and not _process_alive(int(fields[0])))
                if not stale:
                    raise self._in_use(holder) from None
                logger.warning("work dir %s: removing the stale lock of a run that is gone (%s)", self.work_dir,
                               holder or "empty lock file")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            self._write_holder(fd)
            self._fd, self._owns_file = fd, True
            _HELD_FDS.add(fd)
            return
        raise self._in_use(self._holder_text())

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD_FDS.discard(fd)
        with contextlib.suppress(OSError):
            if self._owns_file:
                self.path.unlink()
            else:
                os.ftruncate(fd, 0)  # the file stays (removing a flock'ed file races with a waiting opener)
        os.close(fd)  # releases the flock

    def __del__(self) -> None:
        self.release()


def existing_checkpoints(work_dir: str | os.PathLike) -> list[str]:
    """Names of the checkpoints in ``<work_dir>/checkpoints`` (last.pt, iter_*.pt, best.pt), sorted."""
    folder = Path(work_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir()
                  if entry.name.endswith(".pt") and not entry.name.startswith("."))


def remove_run_outputs(work_dir: Path) -> list[str]:
    """Remove what a training run writes (:data:`RUN_OUTPUTS`) from ``work_dir``; returns the names removed."""
    removed = []
    for name in RUN_OUTPUTS:
        path = work_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def claim_work_dir(work_dir: str | os.PathLike, continuing: bool, overwrite: bool) -> WorkDirLock:
    """Make ``work_dir`` this run's: writable (:func:`probe_writable`), locked (:class:`WorkDirLock`), and
    either ``continuing`` a run (``--resume``, ``runtime.auto_resume``), ``overwrite``-n (:data:`RUN_OUTPUTS`
    removed) or free of checkpoints. Returns the held lock; raises WorkDirError in one line otherwise."""
    work_dir = Path(work_dir)
    probe_writable(work_dir)
    lock = WorkDirLock(work_dir)
    lock.acquire()
    try:
        if overwrite:
            removed = remove_run_outputs(work_dir)
            if removed:
                logger.warning("--overwrite: removed %s from %s", ", ".join(removed), work_dir)
        elif not continuing and (found := existing_checkpoints(work_dir)):
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise WorkDirError(f"work dir {work_dir} already holds a training run (checkpoints/{shown}): continue it "
                               "with --resume, train elsewhere with --work-dir DIR, or start afresh here with "
                               "--overwrite (removes its checkpoints, metrics.jsonl, train.log and tb/)")
        probe_writable(work_dir / "checkpoints")
    except BaseException:
        lock.release()
        raise
    return lock
