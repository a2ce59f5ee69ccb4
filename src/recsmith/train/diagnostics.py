"""Expert health of MMoE / PLE gates, accumulated over an evaluation pass.

Per gate: the mean gate weight of each expert, its utilisation (share of rows on which
it has the largest weight), the Gini coefficient of the mean weights (0 = even use,
(E−1)/E = one expert takes everything), dead experts (never the top choice and mean
weight below DEAD_WEIGHT) and dominant experts (top choice on at least DOMINANT_SHARE
of the rows).
"""

from __future__ import annotations

import numpy as np
import torch

DEAD_WEIGHT = 0.01
DOMINANT_SHARE = 0.9


class GateStats:
    """Running sums of gate weights and top-1 counts, per gate."""

    def __init__(self) -> None:
        self.weight_sum: dict[str, torch.Tensor] = {}
        self.top1: dict[str, torch.Tensor] = {}
        self.rows = 0

    def update(self, gates: dict[str, torch.Tensor]) -> None:
        for name, weights in gates.items():  # weights [B, E]
            weights = weights.detach().float()
            total = weights.sum(dim=0).cpu()
            counts = torch.bincount(weights.argmax(dim=1).cpu(), minlength=weights.shape[1])
            if name in self.weight_sum:
                self.weight_sum[name] += total
                self.top1[name] += counts
            else:
                self.weight_sum[name], self.top1[name] = total, counts
        if gates:
            self.rows += next(iter(gates.values())).shape[0]

    def report(self, expert_names: dict[str, list[str]]) -> list[dict]:
        return [
            expert_health(name, expert_names[name],
                          (self.weight_sum[name] / self.rows).numpy(),
                          (self.top1[name].double() / self.rows).numpy())
            for name in self.weight_sum
        ]


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (mean absolute difference / 2·mean)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or values.sum() == 0:
        return float("nan")
    diffs = np.abs(values[:, None] - values[None, :]).sum()
    return float(diffs / (2.0 * values.size ** 2 * values.mean()))


def expert_health(gate: str, experts: list[str], mean_weight: np.ndarray, top1_share: np.ndarray) -> dict:
    return {
        "gate": gate,
        "experts": experts,
        "mean_weight": [round(float(w), 6) for w in mean_weight],
        "utilisation": [round(float(u), 6) for u in top1_share],
        "gini": round(gini(mean_weight), 6),
        "dead": [e for e, w, u in zip(experts, mean_weight, top1_share) if u == 0 and w < DEAD_WEIGHT],
        "dominant": [e for e, u in zip(experts, top1_share) if u >= DOMINANT_SHARE],
    }
