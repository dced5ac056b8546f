"""The start-up path every command-line tool shares: its parser, logging, the config with ``--opts``, a trained
model from a checkpoint, and known errors turned into one ``error: ...`` line and an exit code.

A tool's ``main(argv)`` parses its arguments, calls :func:`start_logging`, and runs its work inside
:func:`run_tool`, which returns the exit code:

* 0: done;
* :data:`EXIT_BAD_INPUT` (1): bad input, a file, image, checkpoint or value the user gave (``BAD_INPUT_ERRORS``,
  plus what a tool adds), reported by the message alone, which names the file and the entry;
* :data:`EXIT_BAD_CONFIG` (2): a bad config or override (:class:`~detector.config.ConfigError`); argparse
  exits with 2 for a bad command line too;
* :data:`EXIT_INTERRUPTED` (130): Ctrl-C (KeyboardInterrupt) outside what a tool handles itself: one line.

In a multi-process run (torchrun) errors every process meets alike are printed by the main process only; an
unreadable image, met only by the process whose shard holds it, is printed by that process, tagged with its rank.
A process that stops because another one failed (:class:`~detector.runtime.distributed.PeerProcessFailed`)
prints nothing: the failing process reports the error.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable

from torch import nn

from detector.cli.args import add_config_argument, add_opts_argument, tool_parser
from detector.config import ConfigError, load_config
from detector.config_schema import Config
from detector.data.detection_dataset import BadImageError
from detector.predict.checkpoints import build_inference_model, config_from_meta, read_checkpoint_meta
from detector.runtime.checkpoint import CheckpointError, load_checkpoint
from detector.runtime.distributed import PeerProcessFailed
from detector.runtime.logging_setup import setup_logging
from detector.runtime.model_state import StateDictMismatchError, load_model_checkpoint
from detector.runtime.work_dir import OutputPathError

__all__ = ["EXIT_OK", "EXIT_BAD_INPUT", "EXIT_BAD_CONFIG", "EXIT_INTERRUPTED", "BAD_INPUT_ERRORS", "tool_parser",
           "add_config_argument", "add_opts_argument", "start_logging", "load_tool_config", "load_checkpoint_config",
           "load_trained_model", "report_error", "run_tool"]

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_BAD_CONFIG = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as shells report a process ended by Ctrl-C
# Known bad input: the message names the file and the entry, so a traceback would only bury it.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, CheckpointError, BadImageError,
                                                     OutputPathError)
# Errors that one process meets alone (its own shard of the data), so every process reports its own.
PER_PROCESS_ERRORS: tuple[type[BaseException], ...] = (BadImageError,)


def start_logging(rank: int = 0) -> None:
    """Console logging: INFO on the main process, warnings only on the others."""
    setup_logging(rank)


def load_tool_config(path: str, opts: Iterable[str] = (), fixed: Iterable[str] = ()) -> Config:
    """The config at ``path`` with the tool's ``fixed`` overrides first and the user's ``opts`` after them (so a
    user can still set those keys); raises ConfigError naming the key and who set it."""
    return load_config(path, [*fixed, *opts])


def load_checkpoint_config(checkpoint: str, config_path: str | None = None, opts: Iterable[str] = (),
                           fixed: Iterable[str] = ()) -> Config:
    """The config to run ``checkpoint`` with: ``config_path`` when given (:func:`load_tool_config`), else the config
    the checkpoint carries in its metadata, with ``fixed`` then ``opts`` overrides. A checkpoint without metadata
    (written before checkpoints carried it) and no config raise CheckpointError saying to give the config."""
    if config_path is not None:
        return load_tool_config(config_path, opts, fixed)
    state = load_checkpoint(checkpoint, map_location="cpu")
    meta = read_checkpoint_meta(state, checkpoint)
    if meta is None:
        raise CheckpointError(f"checkpoint {checkpoint} carries no config (it was written before checkpoints held "
                              "metadata): give the config it was trained with before it")
    return config_from_meta(meta, checkpoint, [*fixed, *opts])


def load_trained_model(cfg: Config, checkpoint: str, config_path: str | None = None,
                       prefer_ema: bool = True) -> nn.Module:
    """The model of ``cfg`` with the weights of ``checkpoint`` (on the CPU; no backbone weights are fetched nor
    ``model.init_checkpoint`` read: the checkpoint overwrites them), its moving average of the weights when it
    holds one and ``prefer_ema``. Weights of another architecture raise CheckpointError listing the keys and
    shapes, naming the checkpoint and the config it was tried with."""
    model = build_inference_model(cfg)
    try:
        load_model_checkpoint(model, checkpoint, model_type=cfg.model.type, prefer_ema=prefer_ema)
    except StateDictMismatchError as err:
        if err.saved_kind:  # weights of another kind of detector: the message already says both kinds
            raise CheckpointError(str(err)) from None
        against = f" than {config_path}" if config_path else ""
        raise CheckpointError(f"{err}\n  (was {checkpoint} trained with another config{against}? Keys and "
                              "shapes follow model.num_classes, model.backbone.depth, model.neck.* and "
                              "model.head.*)") from None
    return model


def report_error(err: BaseException, rank: int = 0) -> None:
    """Print ``error: <message>`` to stderr (see the module docstring for which process prints)."""
    if rank == 0:
        print(f"error: {err}", file=sys.stderr)
    elif isinstance(err, PER_PROCESS_ERRORS):
        print(f"error (rank {rank}): {err}", file=sys.stderr)


def run_tool(body: Callable[[], int | None], bad_input: tuple[type[BaseException], ...] = BAD_INPUT_ERRORS,
             rank: int | Callable[[], int] = 0) -> int:
    """Run ``body()`` and return its exit code (None: 0); a ConfigError gives 2 and ``bad_input`` errors 1, each
    reported as one ``error:`` line, PeerProcessFailed 1 in silence, and Ctrl-C 130. ``rank``: this process's
    rank, or a function returning it (read when an error is reported, for tools that join a process group inside
    ``body``)."""
    try:
        code = body()
    except ConfigError as err:
        report_error(err, rank() if callable(rank) else rank)
        return EXIT_BAD_CONFIG
    except PeerProcessFailed:  # another process reports the error
        return EXIT_BAD_INPUT
    except bad_input as err:
        report_error(err, rank() if callable(rank) else rank)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if (rank() if callable(rank) else rank) == 0:
            print("interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if code is None else code
