"""How a training run stops early: a graceful stop on SIGTERM / SIGINT, and the two exceptions that end it.

:class:`StopSignal` only records the signal; the trainer reads it once per step, agrees on it with every
process, writes last.pt and raises :class:`TrainingInterrupted`. :class:`NonFiniteLossError` ends a run whose
losses or gradients stayed non-finite too many steps in a row (last.pt is left as the last good state).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

logger = logging.getLogger("detector.engine")


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or gradients too many iterations in a row."""


class TrainingInterrupted(Exception):
    """SIGTERM / SIGINT stopped the run after a step; ``checkpoint`` holds its state (resume from it)."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration {iteration}; "
                         f"checkpoint {checkpoint}")


class StopSignal:
    """While installed, SIGTERM and SIGINT only record the signal; the loop reads it once per step.

    A second SIGINT raises KeyboardInterrupt at once (a way out when a step hangs); a repeated SIGTERM is
    ignored. Python runs signal handlers in the main thread between bytecodes, so the handler never
    interrupts a half-done tensor operation or file write.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training outside the main thread: SIGTERM / SIGINT cannot stop it gracefully")
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
