"""The training loop: iteration-based, epoch-aware, single- or multi-process, resumable exactly.

One call, ``train(cfg, work_dir, resume)``, does the whole run:
  work dir (locked; a new run never overwrites another's checkpoints) -> data (the val set checked up front)
  -> model (DDP when launched by torchrun) -> optimizer + warm-up lr schedule (engine/recipe.py) -> loop (AMP,
  gradient accumulation and clipping, non-finite steps skipped, EMA) -> logging (a plain line every
  ``runtime.log_interval`` iterations on the console and in train.log, tqdm on a terminal, and the
  ``runtime.trackers``: TensorBoard, metrics.jsonl, W&B, MLflow; engine/trackers) -> checkpoints (last.pt + every
  N iterations) -> evaluation (every N iterations and at the end, of the EMA weights when on; TensorBoard images
  of the first val images' detections and per-class PR curves; best.pt and early stopping with
  ``evaluation.save_best``).

The schedule is counted in iterations. With ``schedule.epochs`` the length and ``schedule.steps`` are
converted with the sampler's batches per epoch, as is ``schedule.warmup_epochs`` (with repeat-factor sampling
an epoch is the resampled list); ``schedule.max_iters`` caps the iterations actually run
(the learning-rate schedule keeps the full length, so a capped run is the head of the full run).

Exact resume. A checkpoint holds the model (EFL statistics are model buffers), optimizer, scheduler,
GradScaler, the iteration (which fixes the sampler's epoch and position), the skipped-step counters,
every process's RNG states and, when on, the EMA weights (engine/ema.py) and the best-metric tracker, plus the
metadata that lets the file be used alone (config, class names: :mod:`detector.predict.checkpoints`). Each
sample's augmentation is seeded from (runtime.seed, epoch, position) (:mod:`detector.data.seeded`), so N
iterations + resume + N iterations give the same weights as 2N in one go (bit for bit with
``runtime.deterministic`` on the CPU), with any ``data.num_workers``.

Stopping. SIGTERM / SIGINT / SIGHUP set a flag (loader workers ignore them); the step in flight finishes, every
process agrees on the flag (it rides in the one small all-reduce that each step already makes to agree on
skipping non-finite steps), last.pt is written and :class:`TrainingInterrupted` is raised. During an
evaluation, which a checkpoint precedes, a signal abandons it at once. A second SIGINT abandons the step in
flight. Any other exception that escapes the loop first has last.pt written with the last finished step, EMA
and best-metric tracker included (:mod:`detector.engine.failsafe` says which state that is); best.pt is written
like last.pt. More than ``runtime.max_consecutive_nonfinite`` non-finite steps in a row raise
:class:`NonFiniteLossError` without writing a checkpoint, so last.pt stays the last good state.
"""

from __future__ import annotations

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
from detector.engine.accumulation import GradientAccumulator, amp_autocast, scaled_backward
from detector.engine.best_checkpoint import BEST_KEY, BestTracker, record_best
from detector.engine.ema import EMA_KEY, ModelEMA
from detector.engine.evaluate import check_val_set, evaluate_model
from detector.engine.failsafe import BufferSnapshot, after_error
from detector.engine.model_setup import build_training_model
from detector.engine.recipe import build_lr_scheduler, build_training_optimizer, schedule_length
from detector.engine.resume import find_resume_checkpoint, restore_training_state
from detector.engine.run_checkpoints import RunCheckpoints
from detector.engine.stopping import (NonFiniteLossError, StepResult, StopSignal, TrainingInterrupted,  # noqa: F401
                                     count_skipped_step)  # the tools import the exceptions from here
from detector.engine.trackers import TrackerList, build_trackers
from detector.engine.train_log import metrics_log_line, train_log_line
from detector.predict.checkpoints import build_checkpoint_meta
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
        # First: a listed tracker whose package is missing stops the run before any data or model work.
        self.trackers = on_main_process(lambda: build_trackers(cfg, self.work_dir)) or TrackerList()
        on_main_process(lambda: (save_config(cfg, self.work_dir / "config.yaml"), prepare_synthetic_data(cfg)))
        self.model = model = build_training_model(cfg, self.device, world_size)
        seed_everything(cfg.runtime.seed, rank=rank, deterministic=cfg.runtime.deterministic)
        self.loader, self.sampler = build_train_loader(cfg, rank=rank, world_size=world_size)
        if cfg.runtime.eval_interval or cfg.runtime.eval_at_end:  # now, not at the first evaluation hours later
            on_main_process(lambda: check_val_set(cfg, self.loader.dataset.dataset))
        train_set = self.loader.dataset.dataset  # inside the SeededDataset: class names and category ids
        self.meta = build_checkpoint_meta(cfg, train_set.class_names, train_set.cat_ids)  # in every checkpoint
        self.length = schedule_length(cfg, self.sampler.num_batches_per_epoch)
        self.optimizer = build_training_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer, self.length.total_iters, self.length.milestones,
                                            self.length.warmup_iters)
        self.amp_dtype = resolve_amp_dtype(cfg.runtime.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.runtime.amp == "fp16")
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.accumulator = GradientAccumulator(self.model, cfg.schedule.accumulate, cfg.data.batch_size // world_size,
                                               cfg.schedule.accumulate_exact, amp_autocast(self.device, self.amp_dtype),
                                               scaled_backward(self.scaler))
        self.ema = ModelEMA(model, cfg.runtime.ema.decay, cfg.runtime.ema.warmup) if cfg.runtime.ema.decay else None
        self.best = BestTracker(cfg.evaluation.save_best, cfg.runtime.early_stop_patience)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.buffers = BufferSnapshot(model)  # restored when a step fails half-way (see engine/failsafe.py)
        self.checkpoints = RunCheckpoints(self.work_dir / "checkpoints", cfg.runtime.keep_checkpoints,
                                          writer=is_main_process())
        self.stop = StopSignal()
        self.iteration = 0
        self.num_skipped_steps = 0   # every skipped step (non-finite loss or gradient, fp16 overflow)
        self.nonfinite_streak = 0    # consecutive skipped steps that count toward the limit
        self.phase = "between"       # "step" (forward / backward) or "update" (optimizer step ... EMA update)
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
                "world_size": get_world_size(), "rng": rng_per_rank, "meta": self.meta,
                **({BEST_KEY: self.best.state_dict()} if self.best.enabled else {}),
                **({EMA_KEY: self.ema.state_dict()} if self.ema is not None else {})}

    def model_is_finite(self) -> bool:
        tensors = [t for t in unwrap_model(self.model).state_dict().values() if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True

    def save_checkpoint(self, keep: bool, best: bool = False) -> Path | None:
        """Write last.pt (and iter_*.pt when ``keep``, best.pt when ``best``) on the main process; all processes
        must call it.

        Without ``keep`` nothing is written when last.pt already holds this iteration's state. Returns the written
        path of last.pt or iter_*.pt (None elsewhere, when skipped, or when refused: see
        :meth:`RunCheckpoints.write`)."""
        if not self.checkpoints.due(self.iteration, keep):
            return None
        state = self.state_dict()  # collective: every rank
        self.checkpoints.saved_iteration = self.iteration
        path = self.checkpoints.write(state, self.iteration, keep, self.model_is_finite, best=best)
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
        step: every process then skips, and stops, at the same iteration. The batch's gradients may come from
        several micro-batches (``schedule.accumulate``, GradientAccumulator). The update (optimizer step, scaler
        update, iteration + 1, scheduler step, EMA update) runs with signals deferred, so no signal splits it; a
        failure before it leaves the last step's state (see :mod:`detector.engine.failsafe`).
        """
        self.buffers.take()
        self.phase = "step"
        images = images.to(self.device, non_blocking=True)
        if self.cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        losses, total = self.accumulator.forward_backward(images, targets)  # schedule.accumulate micro-batches
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            grad_norm = torch.zeros((), device=self.device)
        elif self.cfg.schedule.clip_grad_norm:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.cfg.schedule.clip_grad_norm, foreach=True)
        else:
            grad_norm = nn.utils.get_total_norm(grads, foreach=True)
        flags = torch.stack([~torch.isfinite(total), ~torch.isfinite(grad_norm),
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
            if self.ema is not None and not (nonfinite_loss or nonfinite_grad):
                self.ema.update(unwrap_model(self.model))
            self.phase = "between"
        return StepResult({**losses, "loss": total}, grad_norm.detach(), nonfinite_loss, nonfinite_grad, stop)

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
            on_main_process(lambda: self.trackers.on_train_start(config_to_dict(self.cfg), self.iteration))
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
                count_skipped_step(self, step, last_good)
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
                if self.best.should_stop:
                    return

    def finish(self) -> None:
        """The final checkpoint, then the final evaluation unless a signal came after the last step or an early
        stop just evaluated these weights."""
        self.save_checkpoint(keep=bool(self.cfg.runtime.checkpoint_interval))
        if bool(all_reduce_sum(torch.tensor([float(self.stop.requested)])).item()):  # agreed by every process
            self.interrupted()
        if self.cfg.runtime.eval_at_end and not self.best.should_stop:
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
        """Evaluate on the val set (every process), the EMA weights with ``runtime.ema``. A mid-run evaluation first
        brings last.pt up to date, so an error or a kill during it loses no training; a stop signal abandons an
        evaluation at once."""
        if not final:
            self.save_checkpoint(keep=False)
        images_wanted, ev = self.trackers.wants_images, self.cfg.evaluation  # rank 0 only
        self.evaluating = "final" if final else "mid-run"
        with self.stop.abandoning():
            model = self.ema.module if self.ema is not None else unwrap_model(self.model)  # runtime.ema: the average
            metrics = evaluate_model(self.cfg, model, self.device, progress=self.show_bars,
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
        if self.best.enabled:
            record_best(self, metrics)  # best.pt at a new best, best/* to the trackers, early stop
        return metrics


def train(cfg: Config, work_dir: str | Path, resume: bool | str | Path | None = False, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Train as the config says; returns the final evaluation metrics (on the main process).

    ``resume`` / ``overwrite``: see :class:`Trainer`. Raises :class:`TrainingInterrupted` when a signal stopped
    the run (last.pt written) and :class:`NonFiniteLossError` when it diverged (last.pt left as it was)."""
    return Trainer(cfg, work_dir, resume=resume, progress=progress, overwrite=overwrite).fit()
