"""The ranking family's scorer: raw rows (as a log or a request carries them) →
FeaturePipeline (the fitted encoders the training data was prepared with) → sparse ids
[N, F] and dense values [N, D] → the model's task logits → probabilities per head, plus
the funnel pair's composed output (recsmith.tasks) when the model has both heads.

Everything scores in fp32 from the fp32 weights (recsmith.train.precision): the same
numbers the run's evaluation computed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from recsmith.data.batches import load_split
from recsmith.data.schema import DatasetSchema
from recsmith.errors import DataError
from recsmith.features.pipeline import FeaturePipeline
from recsmith.models.ranking import RankingModel
from recsmith.serve.scorer import Scorer
from recsmith.tasks import COMPOSED, FunnelPair, funnel_pair
from recsmith.train.checkpoint import load_checkpoint

MAX_REPORTED_BAD_ROWS = 5


@dataclass
class RankingScorer(Scorer):
    model: RankingModel
    pipeline: FeaturePipeline
    schema: DatasetSchema
    meta: dict  # bundle.json, or a run's description
    runner: Optional[Callable] = None  # the exported graph on ONNX Runtime (serve/export.py), else PyTorch

    @classmethod
    def build(cls, cfg, meta: dict, data_dir: Path, weights: Path) -> "RankingScorer":
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
    def pair(self) -> FunnelPair | None:
        return funnel_pair(self.schema.task_specs, self.tasks)

    @property
    def outputs(self) -> list[str]:
        return self.tasks + ([COMPOSED] if self.pair else [])

    @torch.inference_mode()
    def predict_encoded(self, sparse: np.ndarray, dense: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per output for encoded inputs: sparse [N, F] int32, dense [N, D] float32."""
        if self.runner is not None:
            return {name: values.astype(np.float64) for name, values in zip(self.outputs, self.runner(sparse, dense))}
        logits = self.model(torch.as_tensor(sparse, dtype=torch.int32), torch.as_tensor(dense, dtype=torch.float32))
        probs = {task: torch.sigmoid(value).double().numpy() for task, value in logits.items()}
        if self.pair:
            probs[COMPOSED] = self.pair.composed_probability(probs)
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

    def export_graph(self) -> nn.Module:
        return ProbabilityGraph(self).eval()

    def export_inputs(self, dataset_dir: Path, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The encoded test split (its first `rows`): sparse [N, F] int32, dense [N, D] float32."""
        test = load_split(dataset_dir, self.schema, "test", with_columns=False)
        rows = len(test) if rows is None else min(rows, len(test))
        return test.sparse[:rows].numpy(), test.dense[:rows].numpy()


class ProbabilityGraph(nn.Module):
    """The ranking model with its probabilities as a tuple of outputs (what gets exported):
    sparse [N, F] int32 ids, dense [N, D] float32 → one [N] float32 output per name."""

    inputs = ["sparse", "dense"]

    def __init__(self, scorer: RankingScorer):
        super().__init__()
        self.model, self.outputs, self.pair = scorer.model, scorer.outputs, scorer.pair

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(sparse, dense)
        probs = {task: torch.sigmoid(value) for task, value in logits.items()}
        if self.pair:
            probs[COMPOSED] = self.pair.composed_probability(probs)
        return tuple(probs[name] for name in self.outputs)


def check_alignment(pipeline: FeaturePipeline, schema: DatasetSchema, where: Path) -> None:
    """The encoders must produce exactly the schema's fields, in order, with its sizes."""
    categorical = [(f.name, f.vocab_size) for f in pipeline.sparse_fields()]
    if categorical != [(f.name, f.vocab_size) for f in schema.sparse] or \
            [f.name for f in pipeline.features.numeric] != schema.dense_names:
        raise DataError(f"{where}: features.json / vocab.json do not match schema.json (fields, order or sizes)")
