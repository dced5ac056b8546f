"""MLflow: the run's config as params, scalars and evaluation metrics as metrics, in an MLflow run.

By default the store is the local file store ``file:<work_dir>/mlruns`` (nothing leaves the machine; browse it
with ``mlflow ui --backend-store-uri <work_dir>/mlruns``). MLflow 3 refuses file stores unless
``MLFLOW_ALLOW_FILE_STORE`` is true: this tracker sets it (when unset) for a ``file:`` URI. The run id is kept
in ``<work_dir>/mlflow_run_id.txt``, so a resumed training run logs into the same MLflow run. Only the
``mlflow`` (or ``mlflow-skinny``) package's client is used, imported when this tracker is built
(``pip install 'focaldet[mlflow]'``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detector.engine.trackers.base import TRAIN_PREFIX, VAL_PREFIX, Tracker, prefixed, run_status
from detector.engine.trackers.optional import RunIdFile, import_optional

__all__ = ["MlflowTracker", "flatten_config"]

logger = logging.getLogger("detector.engine")

STATUSES = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"head": {"num_convs": 4}}}`` -> ``{"model.head.num_convs": "4"}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = str(value)
    return flat


class MlflowTracker(Tracker):
    """``tracking_uri`` (None: ``file:<work_dir>/mlruns``), ``experiment`` (created when missing), ``run_name``
    (None: the work dir's name)."""

    name = "mlflow"

    def __init__(self, work_dir: Path, experiment: str, tracking_uri: str | None = None,
                 run_name: str | None = None):
        tracking = import_optional("mlflow.tracking", "mlflow", "mlflow")
        self.entities = import_optional("mlflow.entities", "mlflow", "mlflow")
        self.exceptions = import_optional("mlflow.exceptions", "mlflow", "mlflow")
        self.work_dir = Path(work_dir)
        self.tracking_uri = tracking_uri or (self.work_dir / "mlruns").resolve().as_uri()
        if self.tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment, self.run_name = experiment, run_name or self.work_dir.resolve().name
        self.run_id_file = RunIdFile(self.work_dir / "mlflow_run_id.txt")
        self.run_id: str | None = None

    def on_train_start(self, config, iteration):
        previous = self.run_id_file.previous(iteration)
        if previous is not None and not self._exists(previous):
            logger.warning("MLflow run %s (%s) is not in %s; the resumed training logs into a new run", previous,
                           self.run_id_file.path, self.tracking_uri)
            previous = None
        if previous is not None:  # its params are those of the run it continues (MLflow params never change)
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
            self.client.set_tag(previous, "resumed_at_iteration", str(iteration))
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
            params = [self.entities.Param(key, value) for key, value in flatten_config(config).items()]
            for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])
        self.run_id_file.write(self.run_id)

    def on_log_step(self, iteration, scalars):
        self._log_metrics(iteration, prefixed(TRAIN_PREFIX, scalars))

    def on_evaluation(self, iteration, metrics, images, pr_curves):
        self._log_metrics(iteration, prefixed(VAL_PREFIX, metrics))

    def on_best(self, iteration, values):
        self._log_metrics(iteration, values)

    def on_checkpoint(self, iteration, path):
        if self.run_id is not None:
            self.client.log_batch(self.run_id, tags=[self.entities.RunTag("checkpoint", str(path)),
                                                     self.entities.RunTag("checkpoint_iteration", str(iteration))])

    def on_train_end(self, iteration, metrics):
        self._terminate("finished")

    def on_train_failure(self, iteration, error):
        self._terminate(run_status(error))

    def close(self):
        self._terminate("failed")  # only when neither end came (an error before the loop)

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except self.exceptions.MlflowException:
            return False
        return True

    def _log_metrics(self, iteration: int, values: Mapping[str, float]) -> None:
        if self.run_id is None:
            return
        timestamp = int(time.time() * 1000)
        metrics = [self.entities.Metric(key, float(value), timestamp, iteration) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _terminate(self, status: str) -> None:
        run_id, self.run_id = self.run_id, None
        if run_id is not None:
            self.client.set_terminated(run_id, status=STATUSES[status])
