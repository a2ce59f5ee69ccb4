"""Evaluation: predict a split in large batches, then compute pure metric functions.

Always in fp32 from the fp32 weights, whatever precision trained the model: the numeric
path the Scorer, batch inference, the service and the exports share (recsmith.train.precision)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from recsmith.data.batches import SplitData, eval_batches
from recsmith.metrics.funnel import funnel_metrics, oracle_metrics
from recsmith.train.diagnostics import GateStats


@torch.no_grad()
def predict(model, data: SplitData, batch_size: int, device: torch.device):
    """Task logits for the whole split (`{task: [N]}` on CPU) and its gate statistics."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    gates = GateStats()
    try:
        for batch in eval_batches(data, batch_size):
            batch = batch.to(device)
            logits, gate_weights = model(batch.sparse, batch.dense, with_gates=True)
            for task, values in logits.items():
                chunks[task].append(values.cpu())
            gates.update(gate_weights)
    finally:
        model.train(was_training)
    return {t: torch.cat(v) for t, v in chunks.items()}, gates


def evaluate(model, loss_fn, data: SplitData, batch_size: int, device: torch.device,
             primary_key: str, keep_predictions: Callable | None = None) -> tuple[dict[str, float], GateStats]:
    """All metrics of one split: funnel metrics, the objective's loss, auc_primary, oracles.
    `keep_predictions(probs, labels, columns, tasks)` receives what the metrics were
    computed from (to save them)."""
    logits, gates = predict(model, data, batch_size, device)
    loss, _ = loss_fn(logits, data.labels)
    probs = {t: torch.sigmoid(v).double().numpy() for t, v in logits.items()}
    labels = {k: v.numpy() for k, v in data.labels.items()}
    if keep_predictions is not None:
        keep_predictions(probs, labels, data.columns, data.tasks)
    metrics = funnel_metrics(probs, labels, data.columns, data.tasks)
    metrics["loss"] = float(loss)
    metrics["auc_primary"] = metrics[primary_key]
    metrics.update(oracle_metrics(labels, data.columns))  # synthetic data: the truth's own AUCs
    return {k: _finite_or_nan(v) for k, v in metrics.items()}, gates


def _finite_or_nan(value: float) -> float:
    value = float(value)
    return value if np.isfinite(value) else float("nan")
