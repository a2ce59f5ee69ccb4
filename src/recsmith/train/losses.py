"""Losses over task logits. Each returns `(total, {term: value})` and declares the logits
it needs, so the trainer can check them against the model at start-up."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsmith.tasks import TaskSpec, esmm_pair

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
    """ESMM over the entire impression space (Ma et al. 2018), v2 with an auxiliary term:

        L = BCE(p_ctr, click) + BCE(p_ctcvr, click·conversion) + λ · BCE(p_cvr, conversion | click)

    with p_ctcvr = p_ctr · p_cvr computed in log space: log p_ctcvr = logσ(ctr) + logσ(cvr).
    λ = `esmm.lambda_cvr_aux` (0 for v1).
    """

    required_logits = ["ctr", "cvr"]

    def __init__(self, ctr: TaskSpec, cvr: TaskSpec, lambda_cvr_aux: float):
        self.ctr, self.cvr = ctr, cvr
        self.lambda_cvr_aux = float(lambda_cvr_aux)

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor]):
        click, conversion = labels[self.ctr.label], labels[self.cvr.label]
        log_ctcvr = F.logsigmoid(logits["ctr"]) + F.logsigmoid(logits["cvr"])
        terms = {
            "loss_ctr": F.binary_cross_entropy_with_logits(logits["ctr"], click),
            "loss_ctcvr": bce_from_log_prob(log_ctcvr, click * conversion).mean(),
        }
        total = terms["loss_ctr"] + terms["loss_ctcvr"]
        if self.lambda_cvr_aux > 0:
            terms["loss_cvr_aux"] = task_term(logits, labels, self.cvr)
            total = total + self.lambda_cvr_aux * terms["loss_cvr_aux"]
        return total, terms


def build_loss(cfg, tasks: dict[str, TaskSpec]):
    """The loss an ExperimentConfig describes, for a dataset's tasks (checked to fit)."""
    if cfg.use_esmm:
        return ESMMLoss(*esmm_pair(tasks), cfg.esmm.lambda_cvr_aux)
    return MultiTaskLoss([tasks[head] for head in cfg.model.enabled_heads])


class NextItemLoss:
    """Cross-entropy over all items at every predicted position (SASRec, GRU4Rec, NARM):
    logits["next_item"] [P, I] (column j: item j + 1), labels["next_item"] [P] item ids ≥ 1."""

    required_logits = ["next_item"]

    def __call__(self, logits: dict[str, Tensor], labels: dict[str, Tensor]):
        loss = F.cross_entropy(logits["next_item"].float(), labels["next_item"].long() - 1)
        return loss, {"loss_next_item": loss}
