"""Scoring raw rows with a trained ranking model: the code path shared by batch inference,
the HTTP service, export parity checks and monitoring.

Raw rows (as a log or a request carries them) → FeaturePipeline (the fitted encoders the
training data was prepared with) → sparse ids [N, F] and dense values [N, D] → the model's
task logits → probabilities per head (plus `ctcvr` = p_ctr · p_cvr when both heads exist).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from recsmith.config.loader import load_experiment
from recsmith.data.schema import DatasetSchema
from recsmith.errors import DataError
from recsmith.features.pipeline import FeaturePipeline
from recsmith.models.ranking import RankingModel
from recsmith.run_dir import RunDir
from recsmith.serve.bundle import BUNDLE_FILE, MODEL_FILE, check_bundlable, served_precision
from recsmith.train.checkpoint import load_checkpoint

MAX_REPORTED_BAD_ROWS = 5


def output_names(tasks: list[str]) -> list[str]:
    """The probabilities a scorer returns: every head, and ctcvr when ctr and cvr exist."""
    return list(tasks) + (["ctcvr"] if {"ctr", "cvr"} <= set(tasks) else [])


@dataclass
class Scorer:
    model: RankingModel
    pipeline: FeaturePipeline
    schema: DatasetSchema
    meta: dict  # bundle.json, or a run's description

    @classmethod
    def load(cls, path: str | Path) -> "Scorer":
        """From a bundle directory (registry version, `recsmith export`) or a finished run dir."""
        path = Path(path)
        if (path / BUNDLE_FILE).is_file():
            meta = json.loads((path / BUNDLE_FILE).read_text())
            config_path, data_dir, weights = path / "config.yaml", path, path / MODEL_FILE
        else:
            run = RunDir(path)
            _, report, data_dir = check_bundlable(run)
            meta = {"run_dir": str(path.resolve()), "name": report.get("name"),
                    "primary_key": report.get("primary_key"), "precision": served_precision(report),
                    "metrics": {"test": report.get("test", {})}}
            config_path, weights = run.config, run.ckpt_best
        cfg = load_experiment(config_path)
        schema = DatasetSchema.load(data_dir)
        pipeline = FeaturePipeline.load(data_dir)
        check_alignment(pipeline, schema, data_dir)
        model = RankingModel(schema, cfg)
        model.load_state_dict(load_checkpoint(weights)["model"])
        model.eval()
        meta.setdefault("tasks", list(model.tasks))
        return cls(model, pipeline, schema, meta)

    @property
    def tasks(self) -> list[str]:
        return list(self.model.tasks)

    @property
    def outputs(self) -> list[str]:
        return output_names(self.tasks)

    @torch.inference_mode()
    def predict_encoded(self, sparse: np.ndarray, dense: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per output for encoded inputs: sparse [N, F] int32, dense [N, D] float32."""
        logits = self.model(torch.as_tensor(sparse, dtype=torch.int32), torch.as_tensor(dense, dtype=torch.float32))
        probs = {task: torch.sigmoid(value).double().numpy() for task, value in logits.items()}
        if "ctcvr" in self.outputs:
            probs["ctcvr"] = probs["ctr"] * probs["cvr"]
        return probs

    def encode(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Raw columns → (sparse [N, F] int32, dense [N, D] float32); malformed rows are a DataError."""
        bad, reasons = self.pipeline.invalid_rows(table)
        if bad.any():
            rows = np.flatnonzero(bad)[:MAX_REPORTED_BAD_ROWS]
            listed = "; ".join(f"row {r}: {why}" for r, why in zip(rows, reasons))
            raise DataError(f"{int(bad.sum())} malformed row(s): {listed}")
        encoded = self.pipeline.transform(table)
        n = table.num_rows
        sparse = np.stack([encoded[name] for name in self.schema.sparse_names], axis=1) if self.schema.sparse \
            else np.zeros((n, 0), np.int32)
        dense = np.stack([encoded[name] for name in self.schema.dense_names], axis=1) if self.schema.dense \
            else np.zeros((n, 0), np.float32)
        return sparse, dense

    def predict_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Probabilities per output for a table of raw feature columns."""
        return self.predict_encoded(*self.encode(table))

    def describe(self) -> dict:
        """What a client needs: outputs, and the raw columns to send with their types."""
        return {"tasks": self.tasks, "outputs": self.outputs,
                "features": [{"name": f.name, "column": f.column, "type": f.type, "entity": f.entity,
                              "transformation": f.transformation.kind} for f in self.pipeline.features.features],
                "columns": self.pipeline.features.columns, **{k: v for k, v in self.meta.items() if k != "features"}}


def check_alignment(pipeline: FeaturePipeline, schema: DatasetSchema, where: Path) -> None:
    """The encoders must produce exactly the schema's fields, in order, with its sizes."""
    categorical = [(f.name, f.vocab_size) for f in pipeline.sparse_fields()]
    if categorical != [(f.name, f.vocab_size) for f in schema.sparse] or \
            [f.name for f in pipeline.features.numeric] != schema.dense_names:
        raise DataError(f"{where}: features.json / vocab.json do not match schema.json (fields, order or sizes)")
