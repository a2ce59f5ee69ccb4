"""Top-K metrics of next-item predictions: one relevant item per prediction (leave-last-out).

Given the target's rank r (1 = first) among the ranked candidates:
  hr_K         1 if r ≤ K (hit rate, = recall@K with one relevant item)
  ndcg_K       1 / log2(r + 1) if r ≤ K, else 0 (the ideal DCG is 1)
  precision_K  hr_K / K
  mrr          1 / r over the whole ranking (not cut off)
each averaged over predictions. Ties with the target count half (the expected rank under a
random tie break), so a model that scores everything equally gets the random baseline.
"""

from __future__ import annotations

import numpy as np
import torch

CTR_STYLE = ("auc_like", "gauc_like", "logloss_like")
TOPK = ("hr", "ndcg", "precision")  # families with a cutoff; mrr has none


def sequential_metric_names(cutoffs: list[int]) -> list[str]:
    """Every metric a sequential run reports (top-K family, then CTR-style)."""
    return [f"{m}_{k}" for m in TOPK for k in cutoffs] + ["mrr", *CTR_STYLE]


def target_ranks(scores: torch.Tensor, target: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of `target` among the columns of `scores`.

    scores [N, C] float, target [N] column index, excluded [N, C] bool (columns out of the
    ranking; never the target's). Returns [N] float64 ranks, ties counted half."""
    target_score = scores.gather(1, target.view(-1, 1))  # [N, 1]
    higher, tied = scores > target_score, scores == target_score
    if excluded is not None:
        higher, tied = higher & ~excluded, tied & ~excluded
    return 1.0 + higher.sum(1).double() + (tied.sum(1).double() - 1.0) / 2.0


def per_target(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each prediction's value of a top-K metric ("hr_10", "ndcg_10", "precision_10", "mrr")
    from 1-based target ranks; the metric is their mean. Per-user values (one target per
    user) are what a paired bootstrap over users resamples."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if metric == "mrr":
        return 1.0 / ranks
    family, _, cutoff = metric.partition("_")
    if family not in TOPK or not cutoff.isdigit():
        raise ValueError(f"'{metric}' is not a top-K metric (hr_K, ndcg_K, precision_K or mrr)")
    hit = ranks <= int(cutoff)
    if family == "hr":
        return hit.astype(np.float64)
    if family == "precision":
        return hit / int(cutoff)
    return np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)


def topk_metrics(ranks: np.ndarray, cutoffs: list[int]) -> dict[str, float]:
    """HR, NDCG and Precision at each cutoff and MRR from 1-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {}
    names = [f"{m}_{k}" for k in cutoffs for m in TOPK] + ["mrr"]
    return {name: float(per_target(ranks, name).mean()) for name in names}
