"""Where a run is recorded besides its run dir: one row in experiment_tracker.csv for every
run that started (success, failed, interrupted), and the MLflow run when
`tracking.mlflow` is on. `recorder(cfg, run_dir)` is what `recsmith train` hands to
recsmith.train.run.train_run as `on_end`."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Callable

from recsmith.errors import ConfigError
from recsmith.experiments.tracker import append_row, config_hash, key_hyperparameters, tracker_path
from recsmith.run_dir import RunDir

log = logging.getLogger("recsmith.train")


def recorder(cfg, run_path: str | Path) -> Callable[[str, float, dict], None]:
    """`on_end` for train_run; fails at once when MLflow is asked for but not installed."""
    if cfg.tracking.mlflow and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("tracking.mlflow is true but MLflow is not installed: pip install 'recsmith[tracking]'")
    run = RunDir(run_path)

    def record(status: str, started: float, result: dict) -> None:
        track_run(cfg, run, status, started, result)
        if status == "success" and cfg.tracking.mlflow:
            from recsmith.experiments.mlflow_log import log_run

            log.info("logged to MLflow (%s): run %s", cfg.tracking.mlflow_tracking_uri or "runs/mlruns",
                     log_run(cfg, run, result))

    return record


def track_run(cfg, run: RunDir, status: str, started: float, result: dict) -> None:
    """One row in experiment_tracker.csv; a tracker that cannot be written only warns."""
    config = cfg.model_dump(mode="json")
    row = {"run_id": f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}-{config_hash([config, str(run.path)])[:6]}",
           "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), "name": cfg.name,
           "status": status, "duration_s": round(time.time() - started, 1), "config_hash": config_hash(config),
           "run_dir": str(run.path.resolve()), **key_hyperparameters(cfg),
           **{k: result.get(k) for k in ("best_step", "parameters", "trainable_parameters", "train_seconds")},
           **result.get("test", {})}
    try:
        append_row(tracker_path(), row)
    except OSError as exc:
        log.warning("could not append to %s: %s", tracker_path(), exc)
