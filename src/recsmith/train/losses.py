"""Losses over task logits. Each returns `(total, {term: value})` and declares the logits
it needs, so the trainer can check them against the model at start-up.

Every term is a mean over the rows it covers. When one optimizer step's batch is split
(ranks under DDP, gradient accumulation), `counts(labels)` gives each term's row count on a
part; the trainer sums them over the whole step and passes `counts=` back, and each part's
term is then its sum divided by the step's count: the parts add up to the whole batch's mean
(recsmith.train.distributed). Without `counts` a term is its part's own mean.
"""

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


def batch_mean(values: Tensor, mask: Tensor | None, count: Tensor | None) -> Tensor:
    """`masked_mean`, or with `count` (the rows this term covers in the whole step) this
    part's share of the step's mean."""
    if count is None:
        return masked_mean(values, mask)
    if mask is not None:
        values = values * mask.to(values.dtype)
    return values.sum() / count.clamp_min(1.0)


def observed_rows(labels: dict[str, Tensor], spec: TaskSpec) -> Tensor:
    """How many rows of a batch carry `spec`'s label."""
    if spec.observed_when:
        return (labels[spec.observed_when] > 0).sum().to(torch.float32)
    return torch.tensor(float(len(labels[spec.label])))


def log1mexp(log_p: Tensor) -> Tensor:
    """log(1 − exp(log_p)) for log_p ≤ 0, stable at both ends (Mächler 2012).

    log_p is capped just below 0 (p = 1 has no finite log(1 − p)) so that neither branch
    of the `where` produces an infinite gradient."""
    log_p = log_p.clamp(max=-1e-7)
    return torch.where(log_p > -math.log(2.0), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))


def bce_from_log_prob(log_p: Tensor, target: Tensor) -> Tensor:
    """Elementwise binary cross-entropy given log p; logs clamped at −100 like torch's BCE."""
    return -(target * log_p.clamp(min=-100.0) + (1.0 - target) * log1mexp(log_p).clamp(min=-100.0))


def task_term(logits: dict[str, Tensor], labels: dict[str, Tensor], spec: TaskSpec,
              count: Tensor | None = None) -> Tensor:
    """BCE of one task's head on the rows where its label is observed."""
    mask = labels[spec.observed_when] > 0 if spec.observed_when else None
    values = F.binary_cross_entropy_with_logits(logits[spec.name], labels[spec.label], reduction="none")
    return batch_mean(values, mask, count)


class MultiTaskLoss:
    """Σ_t BCE_t: each head trained on the rows where its label is observed (CVR: clicks)."""

    def __init__(self, tasks: list[TaskSpec]):
        self.tasks = list(tasks)
        self.required_logits = [t.name for t in self.tasks]

    def counts(self, labels: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"loss_{t.name}": observed_rows(labels, t) for t in self.tasks}

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor], counts: dict | None = None):
        terms = {f"loss_{t.name}": task_term(logits, labels, t, counts and counts[f"loss_{t.name}"])
                 for t in self.tasks}
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

    def counts(self, labels: dict[str, Tensor]) -> dict[str, Tensor]:
        first, second = self.pair.first, self.pair.second
        rows = observed_rows(labels, first)
        return {f"loss_{first.name}": rows, f"loss_{COMPOSED}": rows,
                f"loss_{second.name}_aux": observed_rows(labels, second)}

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor], counts: dict | None = None):
        first, second = self.pair.first, self.pair.second
        composed = bce_from_log_prob(self.pair.composed_log_prob(logits), self.pair.composed_labels(labels))
        if counts is None:
            terms = {f"loss_{first.name}": F.binary_cross_entropy_with_logits(logits[first.name], labels[first.label]),
                     f"loss_{COMPOSED}": composed.mean()}
        else:
            values = F.binary_cross_entropy_with_logits(logits[first.name], labels[first.label], reduction="none")
            terms = {f"loss_{first.name}": batch_mean(values, None, counts[f"loss_{first.name}"]),
                     f"loss_{COMPOSED}": batch_mean(composed, None, counts[f"loss_{COMPOSED}"])}
        total = terms[f"loss_{first.name}"] + terms[f"loss_{COMPOSED}"]
        if self.lambda_cvr_aux > 0:
            aux = f"loss_{second.name}_aux"
            terms[aux] = task_term(logits, labels, second, counts and counts[aux])
            total = total + self.lambda_cvr_aux * terms[aux]
        return total, terms


class NextItemLoss:
    """Cross-entropy over all items at every predicted position (SASRec, GRU4Rec, NARM):
    logits["next_item"] [P, I] (column j: item j + 1), labels["next_item"] [P] item ids ≥ 1."""

    required_logits = ["next_item"]

    def counts(self, labels: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss_next_item": torch.tensor(float(len(labels["next_item"])))}

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor], counts: dict | None = None):
        if counts is None:
            loss = F.cross_entropy(logits["next_item"].float(), labels["next_item"].long() - 1)
        else:
            loss = F.cross_entropy(logits["next_item"].float(), labels["next_item"].long() - 1,
                                   reduction="sum") / counts["loss_next_item"].clamp_min(1.0)
        return loss, {"loss_next_item": loss}
