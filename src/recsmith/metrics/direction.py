"""Which way a metric improves: the one rule every selection, gate and ranking uses."""

from __future__ import annotations


def lower_is_better(metric: str) -> bool:
    """Losses (`loss`, `loss_*`, `logloss_*`) go down; everything else (AUC, NDCG, ...) goes up."""
    return metric == "loss" or metric.startswith(("loss_", "logloss"))
