"""Crash-safe checkpoints, model-state loading with readable errors, and RNG state capture.

Design choices:

* **Atomic writes.** :func:`save_checkpoint` serialises into a temporary file in the target directory,
  flushes and fsyncs it, renames it over the target with ``os.replace`` (atomic on POSIX and Windows) and
  fsyncs the directory. Whatever moment a run is killed (``kill -9``, pre-emption, power loss), ``path``
  holds either the previous complete checkpoint or the new complete one, never a partial file.
* **weights_only loading.** Checkpoints contain only tensors, dicts, lists/tuples, ints, floats, bools,
  strings and ``None``, so :func:`load_checkpoint` can use ``torch.load(weights_only=True)`` and never
  executes pickled code. :func:`save_checkpoint` checks this up front so that a stray NumPy scalar fails
  at save time, with the offending key in the message, rather than when resuming days later.
* **RNG state**: :func:`capture_rng_state` / :func:`restore_rng_state` (defined in
  :mod:`detector.engine.seeding`, re-exported here) convert python / NumPy / torch / CUDA generator states to
  those plain types, so they travel in the same weights_only checkpoint.

Only the main process should write checkpoints; that choice belongs to the trainer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from detector.engine.seeding import capture_rng_state, restore_rng_state

__all__ = [
    "CheckpointError",
    "StateDictMismatchError",
    "LoadResult",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointManager",
    "load_model_state",
    "load_model_checkpoint",
    "model_state_from_checkpoint",
    "unwrap_model",
    "capture_rng_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"
# Temporary files written by _atomic_write / CheckpointManager._update_last for the manager's own files.
_STALE_TMP_PATTERN = re.compile(r"^\.(last\.pt|iter_\d+\.pt)\..+\.tmp$")
_PLAIN_TYPES = (str, bytes, int, float, complex, bool, type(None))
_MAX_LISTED_KEYS = 50
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


class StateDictMismatchError(CheckpointError):
    """The keys or shapes of a state dict do not match the model (see the attributes for the full lists)."""

    def __init__(self, message: str, missing_keys: list[str], unexpected_keys: list[str],
                 shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__(message)
        self.missing_keys = missing_keys
        self.unexpected_keys = unexpected_keys
        self.shape_mismatches = shape_mismatches


class LoadResult(NamedTuple):
    """What :func:`load_model_state` could not load (all empty after a clean load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, checkpoint shape, model shape)


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
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TMP_SUFFIX, dir=directory)
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
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    if check_types:
        _check_weights_only_types(state)
    _atomic_write(os.fspath(path), lambda file: torch.save(state, file))


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
    mid-save are removed when the manager is created.

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
        self._update_last(path)
        self._prune(keep=path)
        return path

    def _update_last(self, source: Path) -> None:
        directory = str(self.directory)
        tmp_path = os.path.join(directory, f".{self.LAST_NAME}.link{_TMP_SUFFIX}")
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
        for entry in self.directory.iterdir():
            if _STALE_TMP_PATTERN.match(entry.name) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def _copy_into(source: Path, file) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, file, length=16 * 1024 * 1024)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove a ``module.`` (DDP / DataParallel) or ``_orig_mod.`` (torch.compile) prefix shared by all keys."""
    for prefix in ("module.", "_orig_mod."):
        while state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def _format_keys(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = f", ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"  {title} ({len(keys)}): {shown}{more}"


def load_model_state(model: nn.Module, state_dict: dict[str, Any], strict: bool = True) -> LoadResult:
    """Load ``state_dict`` into ``model``, explaining every mismatch by name.

    A ``module.`` prefix (state saved from a DDP-wrapped model) is stripped, and a wrapped ``model``
    (DDP, DataParallel, torch.compile) is unwrapped, so any combination of wrapped/unwrapped loads.

    Args:
        model: the module to load into.
        state_dict: parameters and buffers, e.g. ``load_checkpoint(path)["model"]``.
        strict: if True, any missing key, unexpected key or shape mismatch raises
            :class:`StateDictMismatchError` listing them all and nothing is loaded. If False, the matching
            entries are loaded, shape-mismatched ones are skipped (e.g. a classifier trained for another
            number of classes), and the mismatches are returned and logged as a warning.

    Returns:
        A :class:`LoadResult` of the keys that were not loaded.
    """
    target = unwrap_model(model)
    state_dict = _strip_wrapper_prefixes(dict(state_dict))
    model_state = target.state_dict()

    missing = [key for key in model_state if key not in state_dict]
    unexpected = [key for key in state_dict if key not in model_state]
    mismatched = [
        (key, tuple(value.shape), tuple(model_state[key].shape))
        for key, value in state_dict.items()
        if key in model_state and isinstance(value, torch.Tensor) and value.shape != model_state[key].shape
    ]
    result = LoadResult(missing, unexpected, mismatched)

    if missing or unexpected or mismatched:
        lines = [f"state dict does not match {type(target).__name__}:"]
        if missing:
            lines.append(_format_keys("missing keys", missing))
        if unexpected:
            lines.append(_format_keys("unexpected keys", unexpected))
        if mismatched:
            lines.append(_format_keys(
                "shape mismatches (key: checkpoint -> model)",
                [f"{key}: {list(src)} -> {list(dst)}" for key, src, dst in mismatched],
            ))
        message = "\n".join(lines)
        if strict:
            raise StateDictMismatchError(message, missing, unexpected, mismatched)
        logger.warning("%s\n  (strict=False: loading the matching entries only)", message)

    skipped = {key for key, _, _ in mismatched}
    loadable = {key: value for key, value in state_dict.items() if key in model_state and key not in skipped}
    target.load_state_dict(loadable, strict=False)
    return result


def model_state_from_checkpoint(state: dict, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The model's state dict inside a loaded checkpoint: ``state["model"]`` (what the trainer saves), or
    ``state`` itself when it is a bare state dict (every value a tensor, e.g. exported weights).

    Raises:
        CheckpointError: naming the file, when there is no ``"model"`` entry and ``state`` is not a state
            dict, or when the state dict is not a mapping of names to tensors.
    """
    path = os.fspath(path)
    if "model" in state:
        state_dict = state["model"]
        where = f"checkpoint {path}: entry 'model'"
    elif state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return state
    else:
        keys = ", ".join(repr(key) for key in list(state)[:10]) or "none"
        raise CheckpointError(f"checkpoint {path} has no 'model' entry and is not a state dict of tensors "
                              f"(top-level keys: {keys})")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{where} holds a {type(state_dict).__name__}, expected a state dict")
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where} is not a state dict of tensors: {', '.join(map(repr, bad[:10]))} "
                              f"{'is not a tensor' if len(bad) == 1 else 'are not tensors'}")
    return state_dict


def load_model_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load the model weights of checkpoint ``path`` into ``model`` (see :func:`load_model_state`).

    Every error names the file: :class:`CheckpointError` for a missing, unreadable or foreign file (not a
    checkpoint, garbage bytes, JSON, a checkpoint without model weights) and :class:`StateDictMismatchError`
    (with its key lists) for weights that do not fit the model, e.g. from a config with another
    ``model.num_classes`` or backbone depth.
    """
    path = os.fspath(path)
    state_dict = model_state_from_checkpoint(load_checkpoint(path, map_location="cpu"), path)
    try:
        return load_model_state(model, state_dict, strict=strict)
    except StateDictMismatchError as err:
        raise StateDictMismatchError(f"checkpoint {path}: {err}", err.missing_keys, err.unexpected_keys,
                                     err.shape_mismatches) from None
