"""When a training run fails: which state is the last good one, and what an exception escaping the loop becomes.

The last good state. A step runs in two parts.

1. Forward, backward, clipping and the all-reduce of the finiteness / stop flags. They touch the gradients
   (dropped at the start of the next step, never saved), the GradScaler's per-step bookkeeping (cleared by its
   ``update()``; the saved scale and growth tracker change only there) and model buffers: BatchNorm running
   statistics in the forward pass, EFL's gradient sums in the backward pass. :class:`BufferSnapshot` copies
   the buffers before each step (one foreach copy) and puts them back when the step fails in this part, so
   model, optimizer, schedule, scaler and iteration are then exactly those of the last finished step.
2. The update: optimizer step, scaler update, iteration + 1, scheduler step, EMA update. It runs with signals
   deferred (:func:`detector.runtime.signals.deferred`), so that neither a signal nor torch's "DataLoader worker
   ... killed" (raised from its SIGCHLD handler between any two bytecodes) cuts it in two. Only an error of the update
   itself can; the weights may then be half-updated, and nothing is written (last.pt keeps its step).

Between steps (loading a batch, logging, checkpointing, evaluating) the state is the last finished step's.

:func:`after_error` runs on every process for an exception that escapes the training loop: it rewinds a
failed step, has the main process write last.pt of the last finished step when last.pt does not hold it yet
(without collectives: other processes may be gone), and returns the exception to raise:

* a signal's stop (also when a loader worker died, or the stop hit an evaluation): TrainingInterrupted;
* a second Ctrl-C (KeyboardInterrupt): TrainingInterrupted (SIGINT), the step in flight abandoned;
* another process's failure seen as a broken collective: PeerProcessFailed (that process reports its error);
* a loader worker that died: TrainingFailed, one line;
* anything else: itself, after a log line naming the checkpoint.
"""

from __future__ import annotations

import logging
import signal

import torch
from torch import nn

from detector.engine.stopping import NonFiniteLossError, StopNow, TrainingInterrupted, signal_name
from detector.runtime.checkpoint import CheckpointWriteError
from detector.runtime.distributed import PeerProcessFailed, is_main_process, is_peer_failure
from detector.runtime.logging_setup import FILE_ONLY

__all__ = ["BufferSnapshot", "TrainingFailed", "is_loader_worker_failure", "after_error"]

logger = logging.getLogger("detector.engine")


class TrainingFailed(RuntimeError):
    """The run stopped on a failure of its environment (a loader worker died), after writing last.pt."""


class BufferSnapshot:
    """A copy of ``model``'s buffers, taken before each step and put back when the step fails."""

    def __init__(self, model: nn.Module):
        self.buffers = [buffer for buffer in model.buffers() if buffer is not None]
        self.copies = [buffer.detach().clone() for buffer in self.buffers]

    def take(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.copies, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            with torch.no_grad():
                torch._foreach_copy_(self.buffers, self.copies)


def is_loader_worker_failure(error: BaseException) -> bool:
    """torch's "DataLoader worker (pid ...) is killed by signal / exited unexpectedly"."""
    return isinstance(error, RuntimeError) and "DataLoader worker" in str(error)


def _rewind(trainer) -> bool:
    """Put back the buffers a failed step touched; False when the failure came during the update, which may
    have half-changed the weights."""
    if trainer.phase == "step":
        trainer.buffers.restore()
        trainer.phase = "between"
    return trainer.phase == "between"


def _save_last_finished_step(trainer) -> None:
    """last.pt of the last finished step, written by the main process alone (no collective: the other processes
    may be gone, its random state only), unless last.pt holds that step already."""
    checkpoints = trainer.checkpoints
    if checkpoints.manager is None or trainer.iteration == 0 or checkpoints.holds(trainer.iteration):
        return
    try:
        checkpoints.write(trainer.state_dict(collective=False), trainer.iteration, False, trainer.model_is_finite)
    except BaseException as error:  # the failure being handled is what the run reports
        logger.error("could not write %s after the failure: %s", checkpoints.last_path, error)


def _stopped_in_evaluation(trainer, signum: int) -> TrainingInterrupted:
    """The stop for a signal that abandoned an evaluation (last.pt was brought up to date before it)."""
    final = trainer.evaluating == "final"
    message = (f"stopped by {signal_name(signum)} during the {'final ' if final else ''}evaluation after "
               f"iteration {trainer.iteration}; {trainer.checkpoints.note()}"
               + ("; training is complete, --resume runs the final evaluation" if final else ""))
    if is_main_process():
        logger.warning("%s", message, extra=FILE_ONLY)  # the tool prints it
    return TrainingInterrupted(signum, trainer.iteration, trainer.checkpoints.existing(), message)


def after_error(trainer, error: BaseException) -> BaseException:
    """The exception to raise for ``error`` (see the module docstring); ``trainer`` is the failing Trainer."""
    if isinstance(error, (TrainingInterrupted, NonFiniteLossError)):
        return error
    if isinstance(error, StopNow):  # a signal during an evaluation, which a checkpoint precedes
        return _stopped_in_evaluation(trainer, error.signum)
    checkpoints = trainer.checkpoints
    consistent = _rewind(trainer)
    if consistent and not isinstance(error, CheckpointWriteError) and not checkpoints.write_aborted:
        _save_last_finished_step(trainer)
    where = checkpoints.note()
    if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C: the step or checkpoint write in flight abandoned
        what = "checkpoint write" if checkpoints.write_aborted else f"iteration {trainer.iteration + 1}"
        return TrainingInterrupted(signal.SIGINT, trainer.iteration, checkpoints.existing(),
                                   f"stopped by a second SIGINT during the {what}, which was abandoned; {where}")
    if is_peer_failure(error):
        if is_main_process():
            logger.info("another process of the run stopped (its error is reported by it); %s", where)
        return PeerProcessFailed(f"another process of the run stopped; {where}")
    signum = trainer.stop.signum
    if signum is not None and is_loader_worker_failure(error):  # the stop asked for; a worker went on the way
        return TrainingInterrupted(signum, trainer.iteration, checkpoints.existing(),
                                   f"stopped by {signal_name(signum)} after iteration {trainer.iteration} (a data "
                                   f"loader worker ended too); {where}")
    if is_loader_worker_failure(error):
        return TrainingFailed(f"{str(error).strip()} (out of memory, or killed); {where}; continue with --resume")
    if is_main_process():
        if not consistent:
            logger.error("the error came during the weight update of iteration %d: nothing written", trainer.iteration)
        logger.warning("training stopped by an error at iteration %d; %s", trainer.iteration, where)
        logger.error("%s: %s", type(error).__name__, error, extra=FILE_ONLY)  # for train.log; the tool prints it
    return error
