"""A training run's checkpoints: which saves are due, what last.pt holds, and failed writes named in one line.

last.pt, iter_*.pt and best.pt (``evaluation.save_best``) are written alike: never from a model holding
non-finite values, never cut by a loader worker's death, and a failed write raises one CheckpointWriteError
line saying what last.pt still holds.

Only the main process writes (a :class:`~detector.runtime.checkpoint.CheckpointManager` over
``<work_dir>/checkpoints``), but every process keeps the same record of the saves, so that all of them agree
on skipping a save whose iteration last.pt already holds: a save is collective (its state gathers every
process's random state), and a process that skipped it alone would leave the others waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from detector.engine.best_checkpoint import BEST_NAME
from detector.runtime.checkpoint import CheckpointManager, CheckpointWriteError, save_checkpoint
from detector.runtime.signals import CHILD_SIGNALS, deferred

__all__ = ["RunCheckpoints"]

logger = logging.getLogger("detector.engine")


class RunCheckpoints:
    """last.pt, iter_*.pt and best.pt of one run; ``writer``: this process writes them (the main process)."""

    def __init__(self, directory: Path, keep_last: int | None, writer: bool):
        self.manager = CheckpointManager(directory, keep_last=keep_last) if writer else None
        self.last_path = Path(directory) / CheckpointManager.LAST_NAME
        self.best_path = Path(directory) / BEST_NAME
        self.saved_iteration: int | None = None  # the iteration of the last save, on every process alike
        self.last_written: int | None = None     # the iteration last.pt holds (writer)
        self.last_outdated = False                # the state changed since last.pt was written at that iteration
        self.write_aborted = False                # a write abandoned by a second Ctrl-C

    def due(self, iteration: int, keep: bool) -> bool:
        """Whether a save at ``iteration`` writes anything: always with ``keep`` (an iter_*.pt file), else when
        last.pt does not hold ``iteration``'s state yet."""
        return keep or self.saved_iteration != iteration

    def state_changed(self) -> None:
        """The run's state changed without a step (the best-metric tracker after an evaluation): the next save
        writes last.pt again, and so does the failsafe after an error."""
        self.saved_iteration = None
        self.last_outdated = True

    def holds(self, iteration: int) -> bool:
        """Whether last.pt holds the current state at ``iteration`` (written by this process)."""
        return self.last_written == iteration and not self.last_outdated

    def write(self, state: dict, iteration: int, keep: bool, model_is_finite: Callable[[], bool],
              best: bool = False) -> Path | None:
        """Write ``state`` as the checkpoint of ``iteration`` (on the writer; None elsewhere), and as best.pt too
        when ``best``.

        A model holding non-finite values (e.g. BatchNorm statistics after a skipped NaN step) is never written,
        so last.pt always holds the last good state. A loader worker's death cannot interrupt the write (SIGCHLD
        is deferred); a failed write (disk full, read-only, ...) raises CheckpointWriteError saying what last.pt
        still holds."""
        if self.manager is None:
            return None
        if not model_is_finite():
            logger.error("iteration %d: the model holds non-finite values; checkpoint not written (%s keeps "
                         "the last good state)", iteration, self.last_path)
            return None
        try:
            with deferred(CHILD_SIGNALS):
                if best:  # first: last.pt never records a best that best.pt does not hold
                    save_checkpoint(self.best_path, state)
                path = self.manager.save(state, iteration, keep=keep)  # keep=False: last.pt only
                self.last_written, self.last_outdated = iteration, False
        except CheckpointWriteError as error:
            raise CheckpointWriteError(f"{error}; {self.note()}", error.os_error) from None
        except KeyboardInterrupt:
            self.write_aborted = True
            raise
        return path

    def resumed(self, path: Path, iteration: int) -> None:
        """The run continues from ``path`` at ``iteration``: when that is this run's last.pt, it holds it."""
        if Path(path).resolve() == self.last_path.resolve():
            self.saved_iteration = self.last_written = iteration

    def note(self) -> str:
        """What last.pt holds, for messages."""
        if self.last_written is not None:
            return f"checkpoint {self.last_path} holds iteration {self.last_written}"
        return f"checkpoint {self.last_path} {'unchanged' if self.last_path.is_file() else 'not written'}"

    def existing(self) -> Path | None:
        return self.last_path if self.last_path.is_file() else None
