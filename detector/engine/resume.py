"""Resuming a run: which checkpoint, whether it holds a training state, and whose random state each process takes.

``--resume`` continues a run exactly where it stopped, so it needs the whole training state (model, optimizer,
schedule, GradScaler, iteration, random states; the EMA weights and the best-metric tracker when the run kept
them). A file with model weights only (a bare state dict, a published
or exported model, ``{"model": ...}``) cannot do that: it is refused in one line that says how to start a new
run from those weights instead (``model.init_checkpoint``, with a fresh optimizer and schedule from iteration 0).
Silently restarting the schedule would put a trained model back through warm-up at the initial learning rate.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from detector.config_schema import Config
from detector.engine.best_checkpoint import BEST_KEY
from detector.engine.optim import load_optimizer_state
from detector.runtime.checkpoint import CheckpointError, load_checkpoint
from detector.runtime.distributed import get_rank, get_world_size
from detector.runtime.model_state import load_model_state, unwrap_model
from detector.runtime.seeding import restore_rng_state

__all__ = ["TRAINING_STATE_KEYS", "find_resume_checkpoint", "check_training_state", "rng_state_for_rank",
           "restore_training_state"]

logger = logging.getLogger("detector.engine")

TRAINING_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "iteration", "rng")


def find_resume_checkpoint(cfg: Config, last_checkpoint: Path, resume: bool | str | Path | None) -> Path | None:
    """The checkpoint to resume from, or None to start fresh (see :class:`detector.engine.trainer.Trainer`)."""
    if resume is True or resume == "auto":
        if last_checkpoint.is_file():
            return last_checkpoint
        logger.warning("--resume: no checkpoint at %s; starting from scratch", last_checkpoint)
        return None
    if resume:
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"--resume: checkpoint file not found: {path}")
        return path
    if cfg.runtime.auto_resume and last_checkpoint.is_file():
        logger.info("runtime.auto_resume: found %s", last_checkpoint)
        return last_checkpoint
    return None


def check_training_state(state: dict, path: Path) -> None:
    """Raise CheckpointError, in one line naming ``path``, unless ``state`` holds a whole training state."""
    missing = [key for key in TRAINING_STATE_KEYS if key not in state]
    if not missing:
        return
    bare = bool(state) and all(isinstance(value, torch.Tensor) for value in state.values())
    if bare or ("model" in state and "optimizer" not in state):
        raise CheckpointError(
            f"--resume: {path} holds model weights only (no optimizer state, schedule or iteration), so no run can "
            f"continue from it; to start a new run from these weights, leave out --resume and set "
            f"model.init_checkpoint={path} (the optimizer and schedule then start at iteration 0)")
    raise CheckpointError(f"--resume: {path} is not a complete training checkpoint: it lacks "
                          f"{', '.join(repr(key) for key in missing)}")


def rng_state_for_rank(rng: dict | list, saved_world_size: int, rank: int, world_size: int, path: Path) -> dict:
    """This process's random state out of a checkpoint's ``rng`` entry (one state, or one per process)."""
    if not isinstance(rng, list):
        return rng
    if saved_world_size != world_size:
        logger.warning("%s was written by %d processes, this run has %d: the data order and RNG streams "
                       "differ from an uninterrupted run", path, saved_world_size, world_size)
    elif len(rng) != world_size:
        logger.warning("%s holds the random state of %d of its %d processes (it was written after a failure): "
                       "the others continue from process 0's", path, len(rng), world_size)
    return rng[rank] if len(rng) == world_size else rng[0]


def restore_training_state(trainer, path: Path) -> None:
    """Put the training state of checkpoint ``path`` into ``trainer`` (every process; see the Trainer)."""
    state = load_checkpoint(path, map_location="cpu")
    bare = bool(state) and all(isinstance(value, torch.Tensor) for value in state.values())
    weights = state if bare else state.get("model")
    # First what a mismatch names best (another kind of model, another parameter grouping), then completeness.
    if weights is not None:
        load_model_state(unwrap_model(trainer.model), weights, source=f"checkpoint {path}",
                         model_type=trainer.cfg.model.type)
    if "optimizer" in state:
        load_optimizer_state(trainer.optimizer, state["optimizer"], source=f"checkpoint {path}")
    check_training_state(state, path)
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.iteration = int(state["iteration"])
    trainer.num_skipped_steps = int(state.get("num_skipped_steps", 0))
    trainer.nonfinite_streak = int(state.get("nonfinite_streak", 0))
    trainer.best.load_state_dict(state.get(BEST_KEY))
    if trainer.ema is not None:
        trainer.ema.resume(state, unwrap_model(trainer.model), f"checkpoint {path}")
    restore_rng_state(rng_state_for_rank(state["rng"], int(state.get("world_size", 1)), get_rank(),
                                         get_world_size(), path))
    trainer.checkpoints.resumed(path, trainer.iteration)
    logger.info("resumed from %s at iteration %d", path, trainer.iteration)
