"""Crash-safe checkpoint files: atomic writes, weights-only loading with readable errors, rolling checkpoints.

Design choices:

* **Atomic writes.** :func:`save_checkpoint` serialises into a temporary file in the target directory,
  flushes and fsyncs it, renames it over the target with ``os.replace`` (atomic on POSIX and Windows) and
  fsyncs the directory. Whatever moment a run is killed (``kill -9``, pre-emption, power loss), ``path``
  holds either the previous complete checkpoint or the new complete one, never a partial file.
* **weights_only loading.** Checkpoints contain only tensors, dicts, lists/tuples, ints, floats, bools,
  strings and ``None``, so :func:`load_checkpoint` can use ``torch.load(weights_only=True)`` and never
  executes pickled code. :func:`save_checkpoint` checks this up front so that a stray NumPy scalar fails
  at save time, with the offending key in the message, rather than when resuming days later.
* **RNG state**: :func:`detector.runtime.seeding.capture_rng_state` converts python / NumPy / torch / CUDA
  generator states to those plain types, so they travel in the same weights_only checkpoint.
* **Temporary files name their writer.** ``.<target>.<host>.<pid>.<random>.tmp``: a manager removes leftovers
  of its own process and of processes of this host that are no longer running (a run killed mid-write), never
  the temporary file of a live run, even of another run writing into the same folder.
* **Failed writes are one clear error.** A full disk, a read-only or vanished folder raise
  :class:`CheckpointWriteError` naming the file and the reason; the previous file at ``path`` is untouched.
* Loading a model's weights out of a checkpoint, with every mismatch named, is
  :mod:`detector.runtime.model_state`.

Only the main process should write checkpoints; that choice belongs to the trainer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointManager",
]

_TMP_SUFFIX = ".tmp"
# Temporary files of _atomic_write / CheckpointManager._update_last: .<target>.<host>.<pid>.<random>.tmp (targets:
# last.pt, best.pt, iter_*.pt)
_OWNED_TMP_PATTERN = re.compile(r"^\.(?:last\.pt|best\.pt|iter_\d+\.pt)\.(?P<host>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_PLAIN_TYPES = (str, bytes, int, float, complex, bool, type(None))
# torch.save writes a zip archive (since PyTorch 1.6); older checkpoints are a raw pickle (protocol >= 2).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_MARK = b"\x80"


def _read_umask() -> int:
    """The process umask (os.umask can only be read by setting it, so set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import (single-threaded) rather than per save, since reading it briefly changes it.
_FILE_MODE = 0o666 & ~_read_umask()


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not hold the expected content."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only or missing folder, ...); ``os_error`` says why."""

    def __init__(self, message: str, os_error: OSError):
        super().__init__(message)
        self.os_error = os_error


def _writer_tag() -> str:
    """``<host>.<pid>``: who writes a temporary file, so that nobody else deletes it."""
    return f"{socket.gethostname() or 'localhost'}.{os.getpid()}"


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind ``error``: itself, or its cause / context (torch.save reports a failed write of its
    zip writer as a RuntimeError raised while handling the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def describe_os_error(error: OSError) -> str:
    """"No space left on device (errno 28)": the reason of a failed write, for one-line messages."""
    reason = error.strerror or str(error)
    code = f" (errno {error.errno}{', ' + errno.errorcode[error.errno] if error.errno in errno.errorcode else ''})" \
        if error.errno else ""
    return f"{reason}{code}"


def _check_weights_only_types(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value that ``torch.load(weights_only=True)`` would refuse.

    Exact type checks, not isinstance: ``numpy.float64`` subclasses ``float`` and ``defaultdict``
    subclasses ``dict``, yet the weights_only unpickler rejects both.
    """
    kind = type(obj)
    if isinstance(obj, torch.Tensor) or kind in _PLAIN_TYPES or isinstance(obj, (torch.dtype, torch.device)):
        return
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int, float, bool):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            _check_weights_only_types(value, f"{where}[{key!r}]")
        return
    if kind in (list, tuple, set, torch.Size):
        for index, value in enumerate(obj):
            _check_weights_only_types(value, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__name__}, which torch.load(weights_only=True) cannot "
        "load; convert it to a tensor, list, int, float or str before saving"
    )


def _fsync_directory(directory: str) -> None:
    """Persist a rename by fsyncing its directory (POSIX only; Windows has no directory handles)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, write_fn) -> None:
    """Run ``write_fn(file)`` on a temporary file next to ``path`` and rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{_writer_tag()}.", suffix=_TMP_SUFFIX,
                                    dir=directory)
    try:
        if hasattr(os, "fchmod"):  # mkstemp creates 0600 files; give checkpoints the usual umask-based mode
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as file:
            write_fn(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    _fsync_directory(directory)


def save_checkpoint(path: str | os.PathLike, state: dict, *, check_types: bool = True) -> None:
    """Atomically write ``state`` to ``path`` with ``torch.save``.

    Args:
        path: destination file; its directory is created if needed.
        state: a dict of tensors / dicts / lists / ints / floats / strings (e.g. ``{"model": ...,
            "optimizer": ..., "scheduler": ..., "iteration": ..., "rng": capture_rng_state()}``).
        check_types: verify beforehand that every value is loadable with ``weights_only=True``.

    Raises:
        TypeError: a value would not be loadable with ``weights_only=True`` (nothing is written).
        CheckpointWriteError: the file system refused the write (full, read-only, ...); ``path`` is unchanged.
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    if check_types:
        _check_weights_only_types(state)
    path = os.fspath(path)
    with _write_errors_named(path):
        _atomic_write(path, lambda file: torch.save(state, file))


@contextlib.contextmanager
def _write_errors_named(path: str):
    """Turn a write that failed on an OSError (also one torch.save wraps in a RuntimeError) into a
    CheckpointWriteError naming ``path``; other errors pass unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        os_error = _os_error_in(error)
        if os_error is None or isinstance(error, CheckpointWriteError):
            raise
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {describe_os_error(os_error)}",
                                   os_error) from error


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: naming the file, when it does not exist, cannot be read/unpickled, or is not a dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    with open(path, "rb") as file:
        head = file.read(16)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTOCOL_MARK)):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive; this file "
                              f"{'is empty' if not head else f'starts with {head!r}'})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, ... : name the file, keep the cause
        raise CheckpointError(f"could not load checkpoint {path}: {_load_error_summary(error)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _load_error_summary(error: Exception) -> str:
    """One line for a ``torch.load`` failure: its type and first line, or for a weights_only refusal (several
    paragraphs of advice) the unpickler's own complaint."""
    text = str(error)
    if "Weights only load failed" in text and "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].split(". ")[0].strip()
        return (f"it holds objects that weights_only loading refuses ({detail}); focaldet checkpoints hold "
                "only tensors and plain Python types")
    first_line = text.strip().split("\n")[0]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


class CheckpointManager:
    """Rolling checkpoints in one directory: ``iter_0012345.pt`` files plus ``last.pt``.

    :meth:`save` writes ``iter_{iteration:07d}.pt`` atomically, then makes ``last.pt`` a hard link to it
    (atomically, through a temporary link and ``os.replace``; a real file, not a symlink, so it survives
    pruning and copying the directory) or, on file systems without hard links, an atomic copy.
    Older ``iter_*.pt`` files beyond ``keep_last`` are deleted. Leftover temporary files of a run killed
    mid-save are removed when the manager is created: those of this process, and those of processes of this
    host that are no longer running (the host and process id are in the name); a live writer's are left alone.

    Args:
        directory: where checkpoints live (created if missing), e.g. ``work_dir/checkpoints``.
        keep_last: number of ``iter_*.pt`` files kept (the newest by iteration number, always including the
            one just written); ``None`` keeps all. ``last.pt`` is always kept.
    """

    LAST_NAME = "last.pt"
    _ITER_PATTERN = re.compile(r"^iter_(\d+)\.pt$")

    def __init__(self, directory: str | os.PathLike, keep_last: int | None = 3) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()

    @property
    def last_path(self) -> Path:
        return self.directory / self.LAST_NAME

    def iter_path(self, iteration: int) -> Path:
        return self.directory / f"iter_{int(iteration):07d}.pt"

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """``(iteration, path)`` of every ``iter_*.pt`` file, sorted by iteration."""
        found = []
        for entry in self.directory.iterdir():
            match = self._ITER_PATTERN.match(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        """``last.pt`` if it exists, else the newest ``iter_*.pt``, else ``None``."""
        if self.last_path.is_file():
            return self.last_path
        checkpoints = self.list_checkpoints()
        return checkpoints[-1][1] if checkpoints else None

    def save(self, state: dict, iteration: int, keep: bool = True) -> Path:
        """Write ``state`` as the checkpoint of ``iteration``, update ``last.pt``, prune; return the path.

        With ``keep=False`` only ``last.pt`` is (atomically) rewritten: no ``iter_*.pt`` file is created and
        none is pruned, e.g. for a final or resume-only save that should not displace the kept history.
        """
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        if not keep:
            save_checkpoint(self.last_path, state)
            return self.last_path
        path = self.iter_path(iteration)
        save_checkpoint(path, state)
        with _write_errors_named(str(self.last_path)):
            self._update_last(path)
        self._prune(keep=path)
        return path

    def _update_last(self, source: Path) -> None:
        directory = str(self.directory)
        tmp_path = os.path.join(directory, f".{self.LAST_NAME}.{_writer_tag()}.link{_TMP_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        try:
            os.link(source, tmp_path)
        except OSError:  # no hard links here (some network / FUSE / FAT file systems): copy instead
            _atomic_write(str(self.last_path), lambda file: _copy_into(source, file))
            return
        try:
            os.replace(tmp_path, self.last_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)
            raise
        _fsync_directory(directory)

    def _prune(self, keep: Path) -> None:
        if self.keep_last is None:
            return
        others = [path for _, path in reversed(self.list_checkpoints()) if path != keep]
        for path in others[self.keep_last - 1:]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _remove_stale_temporaries(self) -> None:
        host = socket.gethostname() or "localhost"
        for entry in self.directory.iterdir():
            match = _OWNED_TMP_PATTERN.match(entry.name)
            if match is None or match["host"] != host or not entry.is_file():
                continue  # another host's writer (a shared file system) may be alive: not ours to judge
            pid = int(match["pid"])
            if pid == os.getpid() or not _process_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a process of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _copy_into(source: Path, file) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, file, length=16 * 1024 * 1024)
