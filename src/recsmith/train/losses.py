"""Losses over task logits. Each returns `(total, {term: value})` and declares the logits
it needs, so the trainer can check them against the model at start-up."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsmith.tasks import COMPOSED, FunnelPair, TaskSpec

Tensor = torch.Tensor


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` where `mask` is true (0 when nothing is observed)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def log1mexp(log_p: Tensor) -> Tensor:
    """log(1 − exp(log_p)) for log_p ≤ 0, stable at both ends (Mächler 2012).

    log_p is capped just below 0 (p = 1 has no finite log(1 − p)) so that neither branch
    of the `where` produces an infinite gradient."""
    log_p = log_p.clamp(max=-1e-7)
    return torch.where(log_p > -math.log(2.0), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))


def bce_from_log_prob(log_p: Tensor, target: Tensor) -> Tensor:
    """Elementwise binary cross-entropy given log p; logs clamped at −100 like torch's BCE."""
    return -(target * log_p.clamp(min=-100.0) + (1.0 - target) * log1mexp(log_p).clamp(min=-100.0))


def task_term(logits: dict[str, Tensor], labels: dict[str, Tensor], spec: TaskSpec) -> Tensor:
    """BCE of one task's head on the rows where its label is observed."""
    mask = labels[spec.observed_when] > 0 if spec.observed_when else None
    values = F.binary_cross_entropy_with_logits(logits[spec.name], labels[spec.label], reduction="none")
    return masked_mean(values, mask)


class MultiTaskLoss:
    """Σ_t BCE_t: each head trained on the rows where its label is observed (CVR: clicks)."""

    def __init__(self, tasks: list[TaskSpec]):
        self.tasks = list(tasks)
        self.required_logits = [t.name for t in self.tasks]

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor]):
        terms = {f"loss_{t.name}": task_term(logits, labels, t) for t in self.tasks}
        return sum(terms.values()), terms


class ESMMLoss:
    """ESMM over the entire impression space (Ma et al. 2018), v2 with an auxiliary term, for a
    funnel pair (first → second: click → conversion):

        L = BCE(p_first, first) + BCE(p_composed, first·second) + λ · BCE(p_second, second | first)

    with the composed probability in log space (recsmith.tasks.FunnelPair.composed_log_prob).
    λ = `model.esmm.lambda_cvr_aux` (0 for v1).
    """

    def __init__(self, pair: FunnelPair, lambda_cvr_aux: float):
        self.pair, self.lambda_cvr_aux = pair, float(lambda_cvr_aux)
        self.required_logits = [pair.first.name, pair.second.name]

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor]):
        first, second = self.pair.first, self.pair.second
        terms = {
            f"loss_{first.name}": F.binary_cross_entropy_with_logits(logits[first.name], labels[first.label]),
            f"loss_{COMPOSED}": bce_from_log_prob(self.pair.composed_log_prob(logits),
                                                  self.pair.composed_labels(labels)).mean(),
        }
        total = terms[f"loss_{first.name}"] + terms[f"loss_{COMPOSED}"]
        if self.lambda_cvr_aux > 0:
            terms[f"loss_{second.name}_aux"] = task_term(logits, labels, second)
            total = total + self.lambda_cvr_aux * terms[f"loss_{second.name}_aux"]
        return total, terms


class NextItemLoss:
    """Cross-entropy over all items at every predicted position (SASRec, GRU4Rec, NARM):
    logits["next_item"] [P, I] (column j: item j + 1), labels["next_item"] [P] item ids ≥ 1."""

    required_logits = ["next_item"]

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor]):
        loss = F.cross_entropy(logits["next_item"].float(), labels["next_item"].long() - 1)
        return loss, {"loss_next_item": loss}
