"""The training loop: iteration-based, epoch-aware, single- or multi-process, resumable exactly.

One call, ``train(cfg, work_dir, resume)``, does the whole run:
  data -> model (DDP when launched by torchrun) -> optimizer + warm-up lr schedule (engine/recipe.py) -> loop
  (AMP, gradient clipping, non-finite steps skipped) -> logging (tqdm, TensorBoard, metrics.jsonl)
  -> checkpoints (last.pt + every N iterations) -> evaluation (every N iterations and at the end; TensorBoard
  images of the first val images' detections and per-class PR curves).

The schedule is counted in iterations. With ``schedule.epochs`` the length and ``schedule.steps`` are
converted with the sampler's batches per epoch, as is ``schedule.warmup_epochs`` (with repeat-factor sampling
an epoch is the resampled list); ``schedule.max_iters`` caps the iterations actually run
(the learning-rate schedule keeps the full length, so a capped run is the head of the full run).

Exact resume. A checkpoint holds the model (EFL statistics are model buffers), optimizer, scheduler,
GradScaler, the iteration (which fixes the sampler's epoch and position), the skipped-step counters,
every process's RNG states and, when on, the EMA weights (engine/ema.py) and the best-metric tracker, plus the
metadata that lets the file be used alone (config, class names: :mod:`detector.predict.checkpoints`). Each
sample's augmentation is seeded from (runtime.seed, epoch, position)
(:mod:`detector.data.seeded`), so N iterations + resume + N iterations give the same weights as 2N in one go
(bit for bit with ``runtime.deterministic`` on the CPU), with any ``data.num_workers``.

Stopping. SIGTERM / SIGINT set a flag; the step in flight finishes, every process agrees on the flag (it
rides in the one small all-reduce that each step already makes to agree on skipping non-finite steps),
last.pt is written and :class:`TrainingInterrupted` is raised. A second SIGINT aborts at once. More than
``runtime.max_consecutive_nonfinite`` non-finite steps in a row raise :class:`NonFiniteLossError` without
writing a checkpoint, so last.pt stays the last good state.
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from detector.config import save_config
from detector.config_schema import Config
from detector.data.build import build_train_loader, prepare_synthetic_data
from detector.engine.accumulation import GradientAccumulator, amp_autocast
from detector.engine.best_checkpoint import BEST_KEY, BEST_NAME, BestTracker
from detector.engine.ema import EMA_KEY, ModelEMA
from detector.engine.evaluate import evaluate_model
from detector.engine.model_setup import build_training_model
from detector.engine.optim import load_optimizer_state
from detector.engine.recipe import build_lr_scheduler, build_training_optimizer, schedule_length
from detector.engine.stopping import NonFiniteLossError, StopSignal, TrainingInterrupted
from detector.predict.checkpoints import build_checkpoint_meta
from detector.runtime.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint
from detector.runtime.device import resolve_amp_dtype, resolve_device
from detector.runtime.distributed import (all_reduce_sum, barrier, get_rank, get_world_size, init_distributed,
                                          is_distributed, is_main_process, reduce_loss_dict)
from detector.runtime.metrics_log import MeterGroup, MetricsLogger
from detector.runtime.model_state import load_model_state, unwrap_model
from detector.runtime.seeding import capture_rng_state, restore_rng_state, seed_everything

logger = logging.getLogger("detector.engine")


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor]  # detached; "loss" is the total
    grad_norm: torch.Tensor          # before clipping
    nonfinite_loss: bool             # on any process
    nonfinite_grad: bool
    stop: bool                       # a process received SIGTERM / SIGINT

    @property
    def skipped(self) -> bool:
        return self.nonfinite_loss or self.nonfinite_grad


def _format_losses(values: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4g}" for key, value in values.items())


class Trainer:
    """Holds the run's state; ``fit()`` runs the loop. Build it with :func:`train`.

    ``resume``: False / None (start fresh, unless ``runtime.auto_resume`` finds ``<work_dir>/checkpoints/
    last.pt``), True or ``"auto"`` (that last.pt; a warning and a fresh start when it is missing), or the path
    of a checkpoint (which must exist).
    """

    def __init__(self, cfg: Config, work_dir: str | Path, resume: bool | str | Path | None = False,
                 progress: bool = True):
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.progress = progress
        rank, world_size, local_rank = init_distributed()
        self.device = resolve_device(cfg.runtime.device, local_rank)
        if cfg.model.backbone.norm == "syncbn" and world_size > 1 and self.device.type == "cpu":
            raise ValueError("model.backbone.norm=syncbn needs CUDA devices (torch's SyncBatchNorm has no CPU "
                             "kernel); use bn, gn or frozen_bn for multi-process CPU runs")
        seed_everything(cfg.runtime.seed, rank=0, deterministic=cfg.runtime.deterministic)  # same init everywhere
        if is_main_process():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.work_dir / "config.yaml")
            prepare_synthetic_data(cfg)
        barrier()

        self.model = model = build_training_model(cfg, self.device, world_size)
        seed_everything(cfg.runtime.seed, rank=rank, deterministic=cfg.runtime.deterministic)
        self.loader, self.sampler = build_train_loader(cfg, rank=rank, world_size=world_size)
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
                                               lambda loss: self.scaler.scale(loss).backward())
        self.ema = ModelEMA(model, cfg.runtime.ema.decay, cfg.runtime.ema.warmup) if cfg.runtime.ema.decay else None
        self.best = BestTracker(cfg.evaluation.save_best, cfg.runtime.early_stop_patience)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.checkpoints = CheckpointManager(self.work_dir / "checkpoints", keep_last=cfg.runtime.keep_checkpoints) \
            if is_main_process() else None
        self.metrics_log = MetricsLogger(self.work_dir)
        self.stop = StopSignal()
        self.iteration = 0
        self.num_skipped_steps = 0   # every skipped step (non-finite loss or gradient, fp16 overflow)
        self.nonfinite_streak = 0    # consecutive skipped steps that count toward the limit
        self.eval_metrics: dict = {}
        path = self.resume_path(resume)
        if path is not None:
            self.resume(path)

    # ------------------------------------------------------------------------------------------- state
    @property
    def last_checkpoint(self) -> Path:
        return self.work_dir / "checkpoints" / CheckpointManager.LAST_NAME

    def resume_path(self, resume: bool | str | Path | None) -> Path | None:
        """The checkpoint to resume from, or None to start fresh (see the class docstring)."""
        if resume is True or resume == "auto":
            if self.last_checkpoint.is_file():
                return self.last_checkpoint
            logger.warning("--resume: no checkpoint at %s; starting from scratch", self.last_checkpoint)
            return None
        if resume:
            path = Path(resume)
            if not path.is_file():
                raise CheckpointError(f"--resume: checkpoint file not found: {path}")
            return path
        if self.cfg.runtime.auto_resume and self.last_checkpoint.is_file():
            logger.info("runtime.auto_resume: found %s", self.last_checkpoint)
            return self.last_checkpoint
        return None

    def state_dict(self) -> dict:
        """The run's state; collective in a distributed run (gathers every process's RNG states)."""
        rng = capture_rng_state()
        rng_per_rank = [rng]
        if is_distributed():
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

    def save_checkpoint(self, keep: bool) -> Path | None:
        """Write last.pt (and iter_*.pt when ``keep``) on the main process; all processes must call it.

        A model holding non-finite values (e.g. BatchNorm statistics after a skipped NaN step) is never
        written, so last.pt always holds the last good state. Returns the written path (None elsewhere or
        when refused)."""
        state = self.state_dict()  # collective: every rank
        path = None
        if self.checkpoints is not None:
            if self.model_is_finite():
                path = self.checkpoints.save(state, self.iteration, keep=keep)  # keep=False: last.pt only
            else:
                logger.error("iteration %d: the model holds non-finite values; checkpoint not written (%s keeps "
                             "the last good state)", self.iteration, self.last_checkpoint)
        barrier()
        return path

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        load_model_state(unwrap_model(self.model), state["model"], source=f"checkpoint {path}",
                         model_type=self.cfg.model.type)
        load_optimizer_state(self.optimizer, state["optimizer"], source=f"checkpoint {path}")
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.num_skipped_steps = int(state.get("num_skipped_steps", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.best.load_state_dict(state.get(BEST_KEY))
        if self.ema is not None:
            self.ema.resume(state, unwrap_model(self.model), f"checkpoint {path}")
        rng, saved_world = state["rng"], int(state.get("world_size", 1))
        if isinstance(rng, list):  # one state per rank
            if saved_world != get_world_size():
                logger.warning("%s was written by %d processes, this run has %d: the data order and RNG streams "
                               "differ from an uninterrupted run", path, saved_world, get_world_size())
            rng = rng[get_rank()] if len(rng) == get_world_size() else rng[0]
        restore_rng_state(rng)
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    # -------------------------------------------------------------------------------------------- loop
    def batches(self):
        """Endless (images, targets) stream that starts where ``self.iteration`` points."""
        epoch, start_batch = divmod(self.iteration, self.length.iters_per_epoch)
        while True:
            self.sampler.set_epoch(epoch, start_batch=start_batch)
            yield from self.loader
            epoch, start_batch = epoch + 1, 0

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> StepResult:
        """One optimiser step, skipped (gradients dropped) when any process saw a non-finite loss or gradient.
        The batch's gradients may come from several micro-batches (``schedule.accumulate``, GradientAccumulator).

        The finiteness flags and the stop flag travel in one 3-element all-reduce, read by the host once per
        step: every process then skips, and stops, at the same iteration.
        """
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
        flags = torch.stack([~torch.isfinite(total.detach()), ~torch.isfinite(grad_norm),
                             torch.tensor(self.stop.requested, device=grad_norm.device)]).float()  # (3,)
        nonfinite_loss, nonfinite_grad, stop = (value > 0 for value in all_reduce_sum(flags).tolist())
        if nonfinite_loss or nonfinite_grad:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optimizer)
        self.scaler.update()  # after a skipped fp16 step: lowers the loss scale (unscale_ recorded the inf)
        return StepResult({**losses, "loss": total}, grad_norm.detach(), nonfinite_loss, nonfinite_grad, stop)

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
        good = f"; last finite losses (iteration {last_good[0]}): {_format_losses(reduce_loss_dict(last_good[1]))}" \
            if last_good is not None else ""
        self.metrics_log.log(self.iteration, {**values, "skipped_steps": self.num_skipped_steps})
        kept = self.last_checkpoint if self.last_checkpoint.is_file() else "none written yet"
        raise NonFiniteLossError(
            f"{self.nonfinite_streak} non-finite steps in a row (limit runtime.max_consecutive_nonfinite="
            f"{limit}) at iteration {self.iteration}; last losses: {_format_losses(values)}{good}; "
            f"last good checkpoint kept: {kept}")

    def fit(self) -> dict:
        """Train to ``run_iters``; returns the final evaluation metrics (on the main process).

        Raises TrainingInterrupted (after saving last.pt) on SIGTERM / SIGINT and NonFiniteLossError
        (without saving) after too many non-finite steps in a row."""
        cfg, run_iters = self.cfg, self.length.run_iters
        meters = MeterGroup(window_size=cfg.runtime.log_interval)
        bar = tqdm(total=run_iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and is_main_process()))
        logger.info("training %d iterations (%d per epoch, schedule length %d, warm-up %d, lr milestones %s) on "
                    "%s x %d", run_iters, self.length.iters_per_epoch, self.length.total_iters,
                    self.length.warmup_iters, self.length.milestones, self.device, get_world_size())
        self.model.train()
        stream = self.batches()
        last_good = None
        try:
            with self.stop.installed():
                tick = time.perf_counter()
                while self.iteration < run_iters:
                    images, targets = next(stream)
                    data_time = time.perf_counter() - tick
                    step = self.train_step(images, targets)
                    self.iteration += 1
                    with warnings.catch_warnings():  # a skipped first step "calls the scheduler first": harmless,
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                        self.scheduler.step()  # the schedule is closed-form in the iteration
                    if step.skipped:
                        self.count_skipped(step, last_good)
                    else:
                        self.nonfinite_streak = 0
                        last_good = (self.iteration, step.losses)
                        if self.ema is not None:
                            self.ema.update(unwrap_model(self.model))
                    iter_time, tick = time.perf_counter() - tick, time.perf_counter()
                    bar.update(1)
                    meters.update(iter_time=iter_time, data_time=data_time)
                    if self.iteration % cfg.runtime.log_interval == 0 or self.iteration == run_iters:
                        self.log_step(step, meters, bar)
                    if step.stop:
                        self.interrupted()
                    interval = cfg.runtime.checkpoint_interval
                    if interval and self.iteration % interval == 0 and self.iteration < run_iters:
                        self.save_checkpoint(keep=True)
                    if cfg.runtime.eval_interval and self.iteration % cfg.runtime.eval_interval == 0 \
                            and self.iteration < run_iters:
                        self.evaluate()
                        if self.best.should_stop:
                            break
                bar.close()
                self.save_checkpoint(keep=bool(cfg.runtime.checkpoint_interval))
                # A signal after the last step's all-reduce: agree on it now and skip the final evaluation.
                if bool(all_reduce_sum(torch.tensor([float(self.stop.requested)])).item()):
                    self.interrupted(saved=True)
            if cfg.runtime.eval_at_end and not self.best.should_stop:  # an early stop just evaluated these weights
                self.evaluate()
        finally:
            bar.close()
            stream.close()
            self.metrics_log.close()
        return self.eval_metrics

    def log_step(self, step: StepResult, meters: MeterGroup, bar: tqdm) -> None:
        values = reduce_loss_dict({**step.losses, "grad_norm": step.grad_norm})  # one all-reduce, one host copy
        values.update(meters.medians(), lr=self.optimizer.param_groups[0]["lr"],
                      skipped_steps=self.num_skipped_steps)
        self.metrics_log.log(self.iteration, values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2g}")

    def interrupted(self, saved: bool = False) -> None:
        """Save last.pt (unless just ``saved``) and raise TrainingInterrupted; every process calls it."""
        signum = self.stop.signum if self.stop.signum is not None else signal.SIGTERM  # signalled elsewhere
        if not saved:
            self.save_checkpoint(keep=False)
        if is_main_process():
            logger.warning("%s: stopped after iteration %d of %d, checkpoint %s (continue with --resume)",
                           signal.Signals(signum).name, self.iteration, self.length.run_iters, self.last_checkpoint)
        raise TrainingInterrupted(signum, self.iteration, self.last_checkpoint)

    def evaluate(self) -> dict:
        tensorboard, ev = self.metrics_log.has_tensorboard, self.cfg.evaluation  # rank 0 only
        model = self.ema.module if self.ema is not None else unwrap_model(self.model)  # runtime.ema: the average
        metrics = evaluate_model(self.cfg, model, self.device, progress=self.progress,
                                 shard_dir=self.work_dir / "eval_shards",
                                 pr_curves=tensorboard and ev.tensorboard_pr_curves,
                                 keep_images=ev.tensorboard_images if tensorboard else 0)
        self.model.train()
        if is_main_process():  # detections drawn on the first val images and per-class PR curves
            self.metrics_log.log_images(self.iteration, metrics.pop("images", {}))
            self.metrics_log.log_pr_curves(self.iteration, metrics.pop("pr_curves", {}))
            self.metrics_log.log(self.iteration, {k: v for k, v in metrics.items() if isinstance(v, float)},
                                 prefix="val")
            logger.info("iteration %d: %s", self.iteration,
                        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        self.eval_metrics = metrics
        if self.best.enabled:
            self.record_best(metrics)
        return metrics

    def record_best(self, metrics: dict) -> None:
        """evaluation.save_best: best.pt and metrics.jsonl's best/* at a new best; the early-stop message."""
        if self.best.observe(self.iteration, metrics):
            state = self.state_dict()  # collective: every rank
            if self.checkpoints is not None:
                save_checkpoint(self.checkpoints.directory / BEST_NAME, state)
        self.metrics_log.log(self.iteration, self.best.record(), prefix=None)
        if self.iteration == self.length.run_iters:  # the end-of-run evaluation comes after last.pt: add it there
            self.save_checkpoint(keep=False)
        if self.best.should_stop and is_main_process():
            logger.warning(self.best.stop_message())


def train(cfg: Config, work_dir: str | Path, resume: bool | str | Path | None = False, progress: bool = True) -> dict:
    """Train as the config says; returns the final evaluation metrics (on the main process).

    ``resume``: see :class:`Trainer`. Raises :class:`TrainingInterrupted` when SIGTERM / SIGINT stopped the
    run (last.pt written) and :class:`NonFiniteLossError` when it diverged (last.pt left as it was)."""
    return Trainer(cfg, work_dir, resume=resume, progress=progress).fit()
