"""The training loop: iteration-based, epoch-aware, single- or multi-process.

One call, ``train(cfg, work_dir, resume)``, does the whole run:
  data -> model (DDP when launched by torchrun) -> SGD + warm-up multi-step schedule -> loop
  (AMP, gradient clipping, non-finite steps skipped) -> logging (tqdm, TensorBoard, metrics.jsonl)
  -> checkpoints (last.pt + every N iterations) -> evaluation (every N iterations and at the end).

The schedule is counted in iterations. With ``schedule.epochs`` the length and ``schedule.steps`` are
converted with the sampler's batches per epoch; ``schedule.max_iters`` caps the iterations actually run
(the learning-rate schedule keeps the full length, so a capped run is the head of the full run).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from detector.config import save_config
from detector.config_schema import Config
from detector.data.build import build_train_loader, prepare_synthetic_data
from detector.engine.checkpoint import (CheckpointManager, capture_rng_state, load_checkpoint, load_model_state,
                                        restore_rng_state, unwrap_model)
from detector.engine.distributed import (barrier, get_rank, get_world_size, init_distributed, is_main_process,
                                         reduce_loss_dict)
from detector.engine.evaluate import evaluate_model, resolve_amp_dtype
from detector.engine.lr_schedule import WarmupMultiStepLR
from detector.engine.metrics_log import MeterGroup, MetricsLogger
from detector.engine.optim import build_optimizer, clip_gradients
from detector.engine.seeding import seed_everything
from detector.models import build_model

logger = logging.getLogger("detector.engine")


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or gradients too many iterations in a row."""


@dataclass
class ScheduleLength:
    iters_per_epoch: int
    total_iters: int      # the schedule's full length
    run_iters: int        # what this run executes (capped by schedule.max_iters)
    milestones: list[int]


def schedule_length(cfg: Config, iters_per_epoch: int) -> ScheduleLength:
    s = cfg.schedule
    unit = iters_per_epoch if s.epochs is not None else 1
    total = (s.epochs if s.epochs is not None else s.iters) * unit
    run = min(total, s.max_iters) if s.max_iters is not None else total
    return ScheduleLength(iters_per_epoch, total, run, [step * unit for step in s.steps])


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device is {name!r} but CUDA is not available; use cpu or auto")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


class Trainer:
    """Holds the run's state; ``fit()`` runs the loop. Build it with :func:`train`."""

    def __init__(self, cfg: Config, work_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.progress = progress
        rank, world_size, local_rank = init_distributed()
        self.device = resolve_device(cfg.runtime.device, local_rank)
        seed_everything(cfg.runtime.seed, rank=0, deterministic=cfg.runtime.deterministic)  # same init everywhere
        if is_main_process():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.work_dir / "config.yaml")
            prepare_synthetic_data(cfg)
        barrier()

        model = build_model(cfg).to(self.device)
        if cfg.model.backbone.norm == "syncbn" and world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        seed_everything(cfg.runtime.seed, rank=rank, deterministic=cfg.runtime.deterministic)
        self.loader, self.sampler = build_train_loader(cfg, rank=rank, world_size=world_size)
        self.length = schedule_length(cfg, len(self.sampler))
        s = cfg.schedule
        self.optimizer = build_optimizer(model, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                         no_decay_norm_bias=s.no_decay_norm_bias)
        self.scheduler = WarmupMultiStepLR(self.optimizer, self.length.milestones, gamma=s.gamma,
                                           warmup_iters=s.warmup_iters, warmup_factor=s.warmup_factor)
        self.amp_dtype = resolve_amp_dtype(cfg.runtime.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.runtime.amp == "fp16")
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.checkpoints = CheckpointManager(self.work_dir / "checkpoints", keep_last=cfg.runtime.keep_checkpoints) \
            if is_main_process() else None
        self.metrics_log = MetricsLogger(self.work_dir)
        self.iteration = 0
        self.num_skipped_steps = 0
        self.eval_metrics: dict = {}
        if resume:
            self.resume()

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"model": unwrap_model(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "num_skipped_steps": self.num_skipped_steps,
                "rng": capture_rng_state()}

    def save_checkpoint(self, keep: bool) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(self.state_dict(), self.iteration, keep=keep)  # keep=False: last.pt only
        barrier()

    def resume(self) -> None:
        path = self.work_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            logger.warning("--resume: no checkpoint at %s; starting from scratch", path)
            return
        state = load_checkpoint(path, map_location="cpu")
        load_model_state(unwrap_model(self.model), state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.num_skipped_steps = int(state.get("num_skipped_steps", 0))
        restore_rng_state(state["rng"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    # -------------------------------------------------------------------------------------------- loop
    def batches(self):
        """Endless (images, targets) stream that starts where ``self.iteration`` points."""
        epoch, start_batch = divmod(self.iteration, self.length.iters_per_epoch)
        while True:
            self.sampler.set_epoch(epoch, start_batch=start_batch)
            yield from self.loader
            epoch, start_batch = epoch + 1, 0

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor] | None:
        """One optimiser step; returns the loss dict, or None when the step was skipped (non-finite)."""
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
        grad_norm = clip_gradients([p for p in self.model.parameters() if p.requires_grad],
                                   self.cfg.schedule.clip_grad_norm)
        finite = torch.isfinite(total.detach()) & (torch.isfinite(torch.as_tensor(grad_norm))
                                                   if grad_norm is not None else True)
        if not bool(finite):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {**losses, "loss": total.detach()}

    def fit(self) -> dict:
        cfg, run_iters = self.cfg, self.length.run_iters
        meters = MeterGroup(window_size=cfg.runtime.log_interval)
        bar = tqdm(total=run_iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and is_main_process()))
        logger.info("training %d iterations (%d per epoch, schedule length %d, lr milestones %s) on %s x %d",
                    run_iters, self.length.iters_per_epoch, self.length.total_iters, self.length.milestones,
                    self.device, get_world_size())
        self.model.train()
        consecutive_bad = 0
        stream = self.batches()
        tick = time.perf_counter()
        while self.iteration < run_iters:
            images, targets = next(stream)
            data_time = time.perf_counter() - tick
            losses = self.train_step(images, targets)
            self.iteration += 1
            self.scheduler.step()
            if losses is None:
                self.num_skipped_steps += 1
                consecutive_bad += 1
                logger.warning("iteration %d: non-finite loss or gradient, step skipped (%d in a row)",
                               self.iteration, consecutive_bad)
                if consecutive_bad >= 5:
                    raise NonFiniteLossError(f"{consecutive_bad} non-finite steps in a row up to iteration "
                                             f"{self.iteration}; the last good checkpoint is kept in "
                                             f"{self.work_dir / 'checkpoints'}")
                continue
            consecutive_bad = 0
            iter_time = time.perf_counter() - tick
            tick = time.perf_counter()
            bar.update(1)
            meters.update(iter_time=iter_time, data_time=data_time)
            if self.iteration % cfg.runtime.log_interval == 0 or self.iteration == run_iters:
                values = reduce_loss_dict(losses)  # the only host sync of the loop, every log_interval steps
                values.update(meters.medians(), lr=self.optimizer.param_groups[0]["lr"],
                              skipped_steps=self.num_skipped_steps)
                self.metrics_log.log(self.iteration, values)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2g}")
            interval = cfg.runtime.checkpoint_interval
            if interval and self.iteration % interval == 0 and self.iteration < run_iters:
                self.save_checkpoint(keep=True)
            if cfg.runtime.eval_interval and self.iteration % cfg.runtime.eval_interval == 0 \
                    and self.iteration < run_iters:
                self.evaluate()
        bar.close()
        self.save_checkpoint(keep=bool(cfg.runtime.checkpoint_interval))
        if cfg.runtime.eval_at_end:
            self.evaluate()
        self.metrics_log.close()
        return self.eval_metrics

    def evaluate(self) -> dict:
        metrics = evaluate_model(self.cfg, unwrap_model(self.model), self.device, progress=self.progress,
                                 shard_dir=self.work_dir / "eval_shards")
        self.model.train()
        if is_main_process():
            self.metrics_log.log(self.iteration, {k: v for k, v in metrics.items() if isinstance(v, float)},
                                 prefix="val")
            logger.info("iteration %d: %s", self.iteration,
                        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        self.eval_metrics = metrics
        return metrics


def train(cfg: Config, work_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train as the config says; returns the final evaluation metrics (on the main process)."""
    return Trainer(cfg, work_dir, resume=resume, progress=progress).fit()
