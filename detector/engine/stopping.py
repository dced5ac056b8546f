"""How a training run stops early: a graceful stop on SIGTERM / SIGINT / SIGHUP, and the exceptions that end it.

:class:`StopSignal` only records the signal; the trainer reads it once per step, agrees on it with every
process, writes last.pt and raises :class:`TrainingInterrupted`. During an evaluation (which changes no training
state, and follows a checkpoint) a signal abandons the evaluation at once instead: :meth:`StopSignal.abandoning`
turns it into :class:`StopNow`. :class:`NonFiniteLossError` (from :func:`count_skipped_step`) ends a run whose
losses or gradients stayed non-finite too many steps in a row (last.pt is left as the last good state).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from detector.runtime.distributed import is_main_process, reduce_loss_dict
from detector.runtime.signals import STOP_SIGNALS

logger = logging.getLogger("detector.engine")


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or gradients too many iterations in a row."""


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor]  # detached; "loss" is the total
    grad_norm: torch.Tensor          # before clipping
    nonfinite_loss: bool             # on any process
    nonfinite_grad: bool
    stop: bool                       # a process received a stop signal

    @property
    def skipped(self) -> bool:
        return self.nonfinite_loss or self.nonfinite_grad


def _format_losses(values: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4g}" for key, value in values.items())


def divergence_error(streak: int, limit: int, iteration: int, losses: dict[str, float],
                     last_good: tuple[int, dict[str, float]] | None, kept: str) -> NonFiniteLossError:
    """The one-line error of a run stopped after ``streak`` non-finite steps in a row (``losses``: the last
    step's, ``last_good``: the iteration and losses of the last finite step, ``kept``: the checkpoint kept)."""
    good = f"; last finite losses (iteration {last_good[0]}): {_format_losses(last_good[1])}" if last_good else ""
    return NonFiniteLossError(
        f"{streak} non-finite steps in a row (limit runtime.max_consecutive_nonfinite={limit}) at iteration "
        f"{iteration}; last losses: {_format_losses(losses)}{good}; last good checkpoint kept: {kept}")


def count_skipped_step(trainer, step: StepResult, last_good: tuple[int, dict] | None) -> None:
    """Count a skipped step of ``trainer``; raise NonFiniteLossError when the streak passes the limit (all ranks
    alike; ``last_good``: the iteration and losses of the last finite step).

    fp16 steps whose gradients overflowed while the loss stayed finite are the GradScaler's normal working (it
    halves the scale and retries): they are counted in ``skipped_steps`` but not in the streak, which would
    otherwise stop healthy fp16 runs during their first iterations.
    """
    trainer.num_skipped_steps += 1
    amp_overflow = trainer.scaler.is_enabled() and not step.nonfinite_loss
    if not amp_overflow:
        trainer.nonfinite_streak += 1
    limit = trainer.cfg.runtime.max_consecutive_nonfinite
    if is_main_process():
        logger.warning("iteration %d: non-finite %s, step skipped (%d in a row, %d skipped in all)",
                       trainer.iteration, "loss" if step.nonfinite_loss else "gradient", trainer.nonfinite_streak,
                       trainer.num_skipped_steps)
    if trainer.nonfinite_streak <= limit:
        return
    values = reduce_loss_dict(step.losses)
    trainer.trackers.on_log_step(trainer.iteration, {**values, "skipped_steps": trainer.num_skipped_steps})
    kept = trainer.last_checkpoint if trainer.last_checkpoint.is_file() else "none written yet"
    raise divergence_error(trainer.nonfinite_streak, limit, trainer.iteration, values,
                           (last_good[0], reduce_loss_dict(last_good[1])) if last_good else None, kept)


class TrainingInterrupted(Exception):
    """A stop signal ended the run; ``checkpoint`` holds the state of ``iteration`` (resume from it).

    ``message`` replaces the default "stopped by SIGTERM after iteration N; checkpoint X" where the stop came at
    another moment (during an evaluation, a step abandoned by a second Ctrl-C, an aborted checkpoint write).
    """

    def __init__(self, signum: int, iteration: int, checkpoint: Path | None, message: str | None = None):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(message or f"stopped by {signal_name(signum)} after iteration {iteration}; "
                                    f"checkpoint {checkpoint}")


class StopNow(BaseException):
    """Raised by the signal handler inside :meth:`StopSignal.abandoning`. A BaseException, as KeyboardInterrupt,
    so that no ``except Exception`` on the way (a loader, an evaluator) swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal_name(signum))


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignal:
    """While installed, SIGTERM, SIGINT and SIGHUP only record the signal; the loop reads it once per step.

    A second SIGINT raises KeyboardInterrupt at once (a way out when a step hangs); a repeated SIGTERM or SIGHUP
    is ignored. Python runs signal handlers in the main thread between bytecodes, so the handler never
    interrupts a half-done tensor operation or file write.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.signum: int | None = None
        self._abandon = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        repeated = self.signum is not None
        if not repeated:
            self.signum = signum
        if self._abandon:
            raise StopNow(self.signum)
        if repeated and signum == signal.SIGINT:
            raise KeyboardInterrupt

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

    @contextlib.contextmanager
    def abandoning(self):
        """Inside the block a stop signal raises :class:`StopNow` at once (also one received before it)."""
        if self.signum is not None:
            raise StopNow(self.signum)
        self._abandon = True
        try:
            yield
        finally:
            self._abandon = False
