"""MLflow logging of a finished run, read from its run dir (`tracking.mlflow: true`).

Params: the flattened resolved config. Metrics: every train/valid record of
metrics.jsonl at its step (`train_loss`, `valid_auc_ctr`, ...) and the test metrics of
eval.json (`test_auc_ctr`, ...). Artifacts: config.yaml, eval.json, metrics.jsonl,
train.log, env.json, and the best checkpoint under `model/`. The store is a local file
store in runs/mlruns unless `tracking.mlflow_tracking_uri` names another (a server URL, a
database). MLflow 3 accepts file stores only with MLFLOW_ALLOW_FILE_STORE=true, which is
set for this process when the store is a file store; set it for `mlflow ui` too:

    MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/mlruns
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from recsmith.config.diff import flatten
from recsmith.errors import ConfigError
from recsmith.run_dir import RunDir

DEFAULT_STORE = Path("runs") / "mlruns"
BATCH = 1000  # MLflow's log_batch limit on metrics per call


def tracking_uri(setting: str | None) -> str:
    return setting or DEFAULT_STORE.resolve().as_uri()


def log_run(cfg, run: RunDir, result: dict, experiment: str | None = None) -> str:
    """Log one finished run; returns the MLflow run id."""
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow is true but MLflow is not installed: "
                          "pip install 'recsmith[tracking]'") from None
    uri = tracking_uri(cfg.tracking.mlflow_tracking_uri)
    if uri.startswith("file:"):  # MLflow 3 keeps file stores behind this documented opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(uri)
    name = experiment or cfg.tracking.mlflow_experiment or cfg.name
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    mlflow_run = client.create_run(experiment_id, run_name=run.path.name,
                                   tags={"recsmith.run_dir": str(run.path.resolve()), "recsmith.config": cfg.name})
    run_id = mlflow_run.info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in flatten(cfg.model_dump(mode="json")).items()]  # MLflow's limit
    for first in range(0, len(params), 100):
        client.log_batch(run_id, params=params[first:first + 100])
    now = int(time.time() * 1000)
    metrics = []
    for record in RunDir.read_jsonl(run.metrics):
        kind = record.get("type")
        if kind in ("train", "valid"):
            metrics += [Metric(f"{kind}_{k}", float(v), now, int(record["step"])) for k, v in record.items()
                        if k not in ("type", "step") and _finite(v)]
    metrics += [Metric(f"test_{k}", float(v), now, int(result.get("best_step") or 0))
                for k, v in result.get("test", {}).items() if _finite(v)]
    for first in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[first:first + BATCH])
    for path in (run.config, run.eval, run.metrics, run.log, run.env):
        if path.is_file():
            client.log_artifact(run_id, str(path))
    if run.ckpt_best.is_file():
        client.log_artifact(run_id, str(run.ckpt_best), artifact_path="model")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
