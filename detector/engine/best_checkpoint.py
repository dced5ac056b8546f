"""Best checkpoint and early stopping (``evaluation.save_best``, ``runtime.early_stop_patience``).

At each evaluation the chosen metric (higher is better: AP, AP50, APr, ...) is compared with the best so far.
A strictly higher value makes this evaluation the best: the trainer writes ``checkpoints/best.pt`` (the full
training checkpoint of that iteration, EMA included). Otherwise the count of evaluations without improvement
grows; when it reaches the patience the run stops (last.pt written, no further evaluation: the last one was of
the same weights). After every evaluation the run's experiment trackers (``runtime.trackers``, ``metrics.jsonl``
among them) record ``best/<metric>`` and ``best/iter``. The best tracker's state is part of the training
checkpoint (key ``best``), so a resumed run keeps its best value and its count.

The main process holds the metrics; its decisions reach every process through one all-reduce, since writing a
checkpoint and stopping are collective.
"""

from __future__ import annotations

import logging
import math

import torch

from detector.runtime.distributed import all_reduce_sum, is_main_process

__all__ = ["BestTracker", "record_best", "BEST_KEY", "BEST_NAME"]

logger = logging.getLogger("detector.engine")

BEST_KEY = "best"
BEST_NAME = "best.pt"


class BestTracker:
    """The best value of ``metric`` so far, its iteration and the evaluations since it improved.

    Args:
        metric: the metric name in the evaluation's results (``evaluation.save_best``), None to track nothing.
        patience: evaluations in a row without improvement after which :attr:`should_stop` (None: never).
    """

    def __init__(self, metric: str | None, patience: int | None = None) -> None:
        if patience is not None and (metric is None or patience < 1):
            raise ValueError("early stopping needs a metric to watch and a patience >= 1")
        self.metric, self.patience = metric, patience
        self.best_value = -math.inf
        self.best_iteration: int | None = None
        self.num_bad_evaluations = 0

    @property
    def enabled(self) -> bool:
        return self.metric is not None

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.num_bad_evaluations >= self.patience

    def observe(self, iteration: int, metrics: dict) -> bool:
        """Take one evaluation's ``metrics`` (read on the main process); whether it is the new best, the same
        answer on every process. A metric missing from the results is an error naming it and the ones there."""
        improved = 0.0
        if is_main_process():
            if self.metric not in metrics:
                available = ", ".join(k for k, v in metrics.items() if isinstance(v, float))
                raise KeyError(f"evaluation.save_best: the evaluation has no metric {self.metric!r} "
                               f"(it has {available})")
            value = float(metrics[self.metric])
            improved = float(value > self.best_value)  # NaN never improves
            if improved:
                self.best_value = value
        improved = bool(all_reduce_sum(torch.tensor([improved])).item())
        if improved:
            self.best_iteration, self.num_bad_evaluations = iteration, 0
        else:
            self.num_bad_evaluations += 1
        return improved

    def stop_message(self) -> str:
        return (f"runtime.early_stop_patience: {self.num_bad_evaluations} evaluations without a better "
                f"{self.metric} than {self.best_value:.4f} (iteration {self.best_iteration}); stopping")

    def record(self) -> dict:
        """The best so far as named scalars: ``{"best/<metric>": value, "best/iter": iteration}``."""
        return {f"best/{self.metric}": self.best_value, "best/iter": self.best_iteration}

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best_value": self.best_value, "best_iteration": self.best_iteration,
                "num_bad_evaluations": self.num_bad_evaluations}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore from a checkpoint's ``best`` entry; none, or one that watched another metric, starts afresh."""
        if not state or state.get("metric") != self.metric:
            if state and state.get("metric") is not None:
                logger.warning("the checkpoint tracked the best %s; this run tracks %s from scratch",
                               state.get("metric"), self.metric)
            return
        self.best_value = float(state["best_value"])
        self.best_iteration = state["best_iteration"]
        self.num_bad_evaluations = int(state["num_bad_evaluations"])


def record_best(trainer, metrics: dict) -> None:
    """After an evaluation of ``trainer`` (every process): best.pt at a new best, last.pt rewritten with the best
    tracker's new state (so that a resumed run counts this evaluation), ``best/*`` sent to the experiment trackers
    (``on_best``), and the early-stop message."""
    best = trainer.best
    improved = best.observe(trainer.iteration, metrics)  # the same answer on every process
    trainer.checkpoints.state_changed()
    trainer.save_checkpoint(keep=False, best=improved)
    if best.best_iteration is not None:  # none yet while the metric was only ever NaN
        trainer.trackers.on_best(trainer.iteration, best.record())
    if best.should_stop and is_main_process():
        logger.warning(best.stop_message())
