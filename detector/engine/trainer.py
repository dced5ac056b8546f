"""The training loop: iteration-based, epoch-aware, single- or multi-process, resumable exactly.

One call, ``train(cfg, work_dir, resume)``, does the whole run:
  work dir (locked; a new run never overwrites another's checkpoints) -> data (the val set checked up front)
  -> model (DDP when launched by torchrun) -> SGD + warm-up multi-step schedule -> loop (AMP, gradient clipping,
  non-finite steps skipped) -> logging (a plain line every ``runtime.log_interval`` iterations on the console and
  in train.log, tqdm on a terminal, ``runtime.trackers``: TensorBoard, metrics.jsonl, W&B, MLflow) -> checkpoints
  (last.pt + every N iterations) -> evaluation (every N iterations and at the end; TensorBoard images of the
  first val images' detections and per-class PR curves).

The schedule is counted in iterations. With ``schedule.epochs`` the length and ``schedule.steps`` are
converted with the sampler's batches per epoch, as is ``schedule.warmup_epochs`` (with repeat-factor sampling
an epoch is the resampled list); ``schedule.max_iters`` caps the iterations actually run
(the learning-rate schedule keeps the full length, so a capped run is the head of the full run).

Exact resume. A checkpoint holds the model (EFL statistics are model buffers), optimizer, scheduler,
GradScaler, the iteration (which fixes the sampler's epoch and position), the skipped-step counters and
every process's RNG states. Each sample's augmentation is seeded from (runtime.seed, epoch, position)
(:mod:`detector.data.seeded`), so N iterations + resume + N iterations give the same weights as 2N in one go
(bit for bit with ``runtime.deterministic`` on the CPU), with any ``data.num_workers``.

Stopping. SIGTERM / SIGINT / SIGHUP set a flag (loader workers ignore them); the step in flight finishes, every
process agrees on the flag (it rides in the one small all-reduce that each step already makes to agree on
skipping non-finite steps), last.pt is written and :class:`TrainingInterrupted` is raised. During an
evaluation, which a checkpoint precedes, a signal abandons it at once. A second SIGINT abandons the step in
flight. Any other exception that escapes the loop first has last.pt written with the last finished step
(:mod:`detector.engine.failsafe` says which state that is). More than ``runtime.max_consecutive_nonfinite``
non-finite steps in a row raise :class:`NonFiniteLossError` without writing a checkpoint, so last.pt stays the
last good state.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from detector.config import config_to_dict, save_config
from detector.config_schema import Config
from detector.data.build import build_train_loader, prepare_synthetic_data
from detector.engine.evaluate import check_val_set, evaluate_model
from detector.engine.failsafe import BufferSnapshot, after_error
from detector.engine.lr_schedule import WarmupMultiStepLR, schedule_length
from detector.engine.model_setup import build_training_model
from detector.engine.optim import build_optimizer
from detector.engine.resume import find_resume_checkpoint, restore_training_state
from detector.engine.run_checkpoints import RunCheckpoints
from detector.engine.stopping import (NonFiniteLossError, StepResult, StopSignal, TrainingInterrupted,  # noqa: F401
                                     divergence_error)  # the tools import the exceptions from here
from detector.engine.train_log import metrics_log_line, train_log_line
from detector.engine.trackers import TrackerList, build_trackers
from detector.runtime.device import resolve_amp_dtype, resolve_device
from detector.runtime.distributed import (all_reduce_sum, barrier, get_world_size, init_distributed,
                                          is_distributed, is_main_process, on_main_process, reduce_loss_dict)
from detector.runtime.logging_setup import FILE_ONLY, add_log_file, remove_log_file
from detector.runtime.metrics_log import MeterGroup
from detector.runtime.model_state import unwrap_model
from detector.runtime.seeding import capture_rng_state, seed_everything
from detector.runtime.signals import STOP_SIGNALS, deferred, shut_down_loader_workers
from detector.runtime.work_dir import claim_work_dir

logger = logging.getLogger("detector.engine")


class Trainer:
    """Holds the run's state; ``fit()`` runs the loop. Build it with :func:`train`.

    ``resume``: False / None (start fresh, unless ``runtime.auto_resume`` finds ``<work_dir>/checkpoints/
    last.pt``), True or ``"auto"`` (that last.pt; a warning and a fresh start when it is missing), or the path
    of a checkpoint (which must exist, and hold a whole training state). A fresh start in a work dir that holds
    checkpoints is refused unless ``overwrite`` (which removes the earlier run's outputs first); another run
    training in the same work dir is refused (:mod:`detector.runtime.work_dir`). ``progress``: tqdm bars, shown
    only when stderr is a terminal.
    """

    def __init__(self, cfg: Config, work_dir: str | Path, resume: bool | str | Path | None = False,
                 progress: bool = True, overwrite: bool = False):
        if overwrite and resume:
            raise ValueError("--overwrite starts a new run and --resume continues one: give one of them")
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        rank, world_size, local_rank = init_distributed()
        self.show_bars = progress and is_main_process() and sys.stderr.isatty()
        self.device = resolve_device(cfg.runtime.device, local_rank)
        if cfg.model.backbone.norm == "syncbn" and world_size > 1 and self.device.type == "cpu":
            raise ValueError("model.backbone.norm=syncbn needs CUDA devices (torch's SyncBatchNorm has no CPU "
                             "kernel); use bn, gn or frozen_bn for multi-process CPU runs")
        self.trackers, self.log_file = TrackerList(), None
        self.lock = on_main_process(lambda: claim_work_dir(self.work_dir, bool(resume) or cfg.runtime.auto_resume,
                                                           overwrite))
        try:  # after the lock: a refused run never writes into another run's log
            self.log_file = add_log_file(str(self.work_dir / "train.log")) if is_main_process() else None
            self.set_up(rank, world_size, resume)
        except BaseException:
            self.close()
            raise

    def set_up(self, rank: int, world_size: int, resume: bool | str | Path | None) -> None:
        cfg = self.cfg
        seed_everything(cfg.runtime.seed, rank=0, deterministic=cfg.runtime.deterministic)  # same init everywhere
        on_main_process(lambda: (save_config(cfg, self.work_dir / "config.yaml"), prepare_synthetic_data(cfg)))
        self.model = model = build_training_model(cfg, self.device, world_size)
        seed_everything(cfg.runtime.seed, rank=rank, deterministic=cfg.runtime.deterministic)
        self.loader, self.sampler = build_train_loader(cfg, rank=rank, world_size=world_size)
        if cfg.runtime.eval_interval or cfg.runtime.eval_at_end:  # now, not at the first evaluation hours later
            on_main_process(lambda: check_val_set(cfg, self.loader.dataset.dataset))
        self.length = schedule_length(cfg, self.sampler.num_batches_per_epoch)
        s = cfg.schedule
        self.optimizer = build_optimizer(model, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                         no_decay_norm_bias=s.no_decay_norm_bias,
                                         fused=cfg.runtime.fused_optimizer)
        self.scheduler = WarmupMultiStepLR(self.optimizer, self.length.milestones, gamma=s.gamma,
                                           warmup_iters=self.length.warmup_iters, warmup_factor=s.warmup_factor)
        self.amp_dtype = resolve_amp_dtype(cfg.runtime.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.runtime.amp == "fp16")
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.buffers = BufferSnapshot(model)  # restored when a step fails half-way (see engine/failsafe.py)
        self.checkpoints = RunCheckpoints(self.work_dir / "checkpoints", cfg.runtime.keep_checkpoints,
                                          writer=is_main_process())
        self.trackers = self.metrics_log = on_main_process(lambda: build_trackers(cfg, self.work_dir)) or TrackerList()
        self.stop = StopSignal()
        self.iteration = 0
        self.num_skipped_steps = 0   # every skipped step (non-finite loss or gradient, fp16 overflow)
        self.nonfinite_streak = 0    # consecutive skipped steps that count toward the limit
        self.phase = "between"       # "step" (forward / backward) or "update" (optimizer step ... iteration + 1)
        self.evaluating = None       # "mid-run" or "final" during an evaluation
        self.eval_metrics: dict = {}
        path = self.resume_path(resume)
        if path is not None:
            self.resume(path)

    def close(self) -> None:
        """End the loader workers, close the logs and release the work dir (done by ``fit()``; idempotent)."""
        if getattr(self, "loader", None) is not None:
            shut_down_loader_workers(self.loader)
        self.trackers.close()
        if self.log_file is not None:
            remove_log_file(self.log_file)
            self.log_file = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ------------------------------------------------------------------------------------------- state
    @property
    def last_checkpoint(self) -> Path:
        return self.work_dir / "checkpoints" / "last.pt"

    def resume_path(self, resume: bool | str | Path | None) -> Path | None:
        """The checkpoint to resume from, or None to start fresh (see the class docstring)."""
        return find_resume_checkpoint(self.cfg, self.last_checkpoint, resume)

    def state_dict(self, collective: bool = True) -> dict:
        """The run's state. ``collective`` (every process must call it) gathers every process's RNG states;
        otherwise only this process's are included (after a failure, when other processes may be gone)."""
        rng = capture_rng_state()
        rng_per_rank = [rng]
        if collective and is_distributed():
            rng_per_rank = [None] * get_world_size()
            torch.distributed.all_gather_object(rng_per_rank, rng)
        epoch, position = divmod(self.iteration, self.length.iters_per_epoch)
        return {"model": unwrap_model(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "epoch": epoch, "batch_in_epoch": position,
                "num_skipped_steps": self.num_skipped_steps, "nonfinite_streak": self.nonfinite_streak,
                "world_size": get_world_size(), "rng": rng_per_rank}

    def model_is_finite(self) -> bool:
        tensors = [t for t in unwrap_model(self.model).state_dict().values() if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True

    def save_checkpoint(self, keep: bool) -> Path | None:
        """Write last.pt (and iter_*.pt when ``keep``) on the main process; all processes must call it.

        Without ``keep`` nothing is written when last.pt already holds this iteration. Returns the written path
        (None elsewhere, when skipped, or when refused: see :meth:`RunCheckpoints.write`)."""
        if not self.checkpoints.due(self.iteration, keep):
            return None
        state = self.state_dict()  # collective: every rank
        self.checkpoints.saved_iteration = self.iteration
        path = self.checkpoints.write(state, self.iteration, keep, self.model_is_finite)
        if path is not None:
            self.trackers.on_checkpoint(self.iteration, path)
        barrier()
        return path

    def resume(self, path: Path) -> None:
        restore_training_state(self, path)

    # -------------------------------------------------------------------------------------------- loop
    def batches(self):
        """Endless (images, targets) stream that starts where ``self.iteration`` points."""
        epoch, start_batch = divmod(self.iteration, self.length.iters_per_epoch)
        while True:
            self.sampler.set_epoch(epoch, start_batch=start_batch)
            with deferred(STOP_SIGNALS):  # workers start with them held, until they ignore them
                iterator = iter(self.loader)
            yield from iterator
            epoch, start_batch = epoch + 1, 0

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> StepResult:
        """One optimiser step, skipped (gradients dropped) when any process saw a non-finite loss or gradient.

        The finiteness flags and the stop flag travel in one 3-element all-reduce, read by the host once per
        step: every process then skips, and stops, at the same iteration. The update (optimizer step, scaler
        update, iteration + 1, scheduler step) runs with signals deferred, so no signal splits it; a failure
        before it leaves the last step's state (see :mod:`detector.engine.failsafe`).
        """
        self.buffers.take()
        self.phase = "step"
        images = images.to(self.device, non_blocking=True)
        if self.cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else \
            contextlib.nullcontext()
        with autocast:
            losses = self.model(images, targets)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            grad_norm = torch.zeros((), device=self.device)
        elif self.cfg.schedule.clip_grad_norm:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.cfg.schedule.clip_grad_norm, foreach=True)
        else:
            grad_norm = nn.utils.get_total_norm(grads, foreach=True)
        flags = torch.stack([~torch.isfinite(total.detach()), ~torch.isfinite(grad_norm),
                             torch.tensor(self.stop.requested, device=grad_norm.device)]).float()  # (3,)
        nonfinite_loss, nonfinite_grad, stop = (value > 0 for value in all_reduce_sum(flags).tolist())
        with deferred():
            self.phase = "update"
            if nonfinite_loss or nonfinite_grad:
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self.scaler.step(self.optimizer)
            self.scaler.update()  # after a skipped fp16 step: lowers the loss scale (unscale_ recorded the inf)
            self.iteration += 1
            with warnings.catch_warnings():  # a skipped first step "calls the scheduler first": harmless
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                self.scheduler.step()  # the schedule is closed-form in the iteration
            self.phase = "between"
        return StepResult({**{k: v.detach() for k, v in losses.items()}, "loss": total.detach()},
                          grad_norm.detach(), nonfinite_loss, nonfinite_grad, stop)
    def count_skipped(self, step: StepResult, last_good: tuple[int, dict] | None) -> None:
        """Count a skipped step; raise NonFiniteLossError when the streak passes the limit (all ranks alike).

        fp16 steps whose gradients overflowed while the loss stayed finite are the GradScaler's normal
        working (it halves the scale and retries): they are counted in ``skipped_steps`` but not in the
        streak, which would otherwise stop healthy fp16 runs during their first iterations.
        """
        self.num_skipped_steps += 1
        amp_overflow = self.scaler.is_enabled() and not step.nonfinite_loss
        if not amp_overflow:
            self.nonfinite_streak += 1
        limit = self.cfg.runtime.max_consecutive_nonfinite
        if is_main_process():
            logger.warning("iteration %d: non-finite %s, step skipped (%d in a row, %d skipped in all)",
                           self.iteration, "loss" if step.nonfinite_loss else "gradient", self.nonfinite_streak,
                           self.num_skipped_steps)
        if self.nonfinite_streak <= limit:
            return
        values = reduce_loss_dict(step.losses)
        self.trackers.on_log_step(self.iteration, {**values, "skipped_steps": self.num_skipped_steps})
        kept = self.last_checkpoint if self.last_checkpoint.is_file() else "none written yet"
        raise divergence_error(self.nonfinite_streak, limit, self.iteration, values,
                               (last_good[0], reduce_loss_dict(last_good[1])) if last_good else None, kept)

    def fit(self) -> dict:
        """Train to ``run_iters``; returns the final evaluation metrics (on the main process).

        Raises TrainingInterrupted (after saving last.pt) on SIGTERM / SIGINT / SIGHUP, NonFiniteLossError
        (without saving) after too many non-finite steps in a row, and any other error after saving last.pt of
        the last finished step (see :func:`detector.engine.failsafe.after_error`). Releases the work dir."""
        bar = tqdm(total=self.length.run_iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not self.show_bars)
        logger.info("training %d iterations (%d per epoch, schedule length %d, warm-up %d, lr milestones %s) on "
                    "%s x %d", self.length.run_iters, self.length.iters_per_epoch, self.length.total_iters,
                    self.length.warmup_iters, self.length.milestones, self.device, get_world_size())
        self.model.train()
        stream = self.batches()
        try:
            self.trackers.on_train_start(config_to_dict(self.cfg), self.iteration)
            with self.stop.installed():
                try:
                    self.run_steps(stream, bar)
                    bar.close()
                    self.finish()
                    self.trackers.on_train_end(self.iteration, self.eval_metrics)
                except BaseException as error:
                    failure = after_error(self, error)
                    self.trackers.on_train_failure(self.iteration, failure)
                    if failure is error:
                        raise
                    raise failure from error
        finally:
            bar.close()
            stream.close()
            self.close()
        return self.eval_metrics

    def run_steps(self, stream, bar: tqdm) -> None:
        cfg, run_iters = self.cfg, self.length.run_iters
        meters = MeterGroup(window_size=cfg.runtime.log_interval)
        last_good = None
        tick = time.perf_counter()
        while self.iteration < run_iters:
            images, targets = next(stream)
            data_time = time.perf_counter() - tick
            step = self.train_step(images, targets)
            if step.skipped:
                self.count_skipped(step, last_good)
            else:
                self.nonfinite_streak = 0
                last_good = (self.iteration, step.losses)
            iter_time, tick = time.perf_counter() - tick, time.perf_counter()
            bar.update(1)
            meters.update(iter_time=iter_time, data_time=data_time)
            if self.iteration % cfg.runtime.log_interval == 0 or self.iteration == run_iters:
                self.log_step(step, meters, bar)
            if step.stop:
                self.interrupted()
            if cfg.runtime.checkpoint_interval and self.iteration % cfg.runtime.checkpoint_interval == 0 \
                    and self.iteration < run_iters:
                self.save_checkpoint(keep=True)
            if cfg.runtime.eval_interval and self.iteration % cfg.runtime.eval_interval == 0 \
                    and self.iteration < run_iters:
                self.evaluate()

    def finish(self) -> None:
        """The final checkpoint, then the final evaluation unless a signal came after the last step."""
        self.save_checkpoint(keep=bool(self.cfg.runtime.checkpoint_interval))
        if bool(all_reduce_sum(torch.tensor([float(self.stop.requested)])).item()):  # agreed by every process
            self.interrupted()
        if self.cfg.runtime.eval_at_end:
            self.evaluate(final=True)

    def log_step(self, step: StepResult, meters: MeterGroup, bar: tqdm) -> None:
        values = reduce_loss_dict({**step.losses, "grad_norm": step.grad_norm})  # one all-reduce, one host copy
        values.update(meters.medians(), lr=self.optimizer.param_groups[0]["lr"],
                      skipped_steps=self.num_skipped_steps)
        self.trackers.on_log_step(self.iteration, values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2g}")
        if is_main_process():
            logger.info(train_log_line(self.iteration, self.length.run_iters, values, self.device))

    def interrupted(self) -> None:
        """Save last.pt (unless it holds this iteration) and raise TrainingInterrupted; every process calls it."""
        signum = self.stop.signum if self.stop.signum is not None else signal.SIGTERM  # signalled elsewhere
        self.save_checkpoint(keep=False)
        stop = TrainingInterrupted(signum, self.iteration, self.last_checkpoint)
        if is_main_process():
            logger.warning("%s (continue with --resume)", stop, extra=FILE_ONLY)  # the tool prints it
        raise stop

    def evaluate(self, final: bool = False) -> dict:
        """Evaluate on the val set (every process). A mid-run evaluation first brings last.pt up to date, so an
        error or a kill during it loses no training; a stop signal abandons an evaluation at once."""
        if not final:
            self.save_checkpoint(keep=False)
        images_wanted, ev = self.trackers.wants_images, self.cfg.evaluation  # rank 0 only
        self.evaluating = "final" if final else "mid-run"
        with self.stop.abandoning():
            metrics = evaluate_model(self.cfg, unwrap_model(self.model), self.device, progress=self.show_bars,
                                     shard_dir=self.work_dir / "eval_shards",
                                     pr_curves=images_wanted and ev.tensorboard_pr_curves,
                                     keep_images=ev.tensorboard_images if images_wanted else 0)
        self.evaluating = None
        self.model.train()
        if is_main_process():  # detections drawn on the first val images and per-class PR curves
            images, curves = metrics.pop("images", {}), metrics.pop("pr_curves", {})
            scalars = {key: value for key, value in metrics.items() if isinstance(value, float)}
            self.trackers.on_evaluation(self.iteration, scalars, images, curves)
            # printed once: mid-run on the console and in train.log; at the end train.log only (the tool prints
            # the table)
            logger.info("evaluation at iteration %d: %s", self.iteration, metrics_log_line(metrics),
                        extra=FILE_ONLY if final else None)
        self.eval_metrics = metrics
        return metrics


def train(cfg: Config, work_dir: str | Path, resume: bool | str | Path | None = False, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Train as the config says; returns the final evaluation metrics (on the main process).

    ``resume`` / ``overwrite``: see :class:`Trainer`. Raises :class:`TrainingInterrupted` when a signal stopped
    the run (last.pt written) and :class:`NonFiniteLossError` when it diverged (last.pt left as it was)."""
    return Trainer(cfg, work_dir, resume=resume, progress=progress, overwrite=overwrite).fit()
