"""Funnel metrics of one evaluation: CTR, CVR, CTCVR and, on synthetic data, the truth.

Names (all computed on the evaluated split):
  auc_ctr, gauc_ctr, logloss_ctr, calibration_ctr   p_ctr vs click, all impressions
  auc_cvr, gauc_cvr, logloss_cvr, calibration_cvr   p_cvr vs conversion, clicked rows
  auc_cvr_masked                                    p_cvr on the rows whose CVR label is
                                                    observed (the task's label mask; on
                                                    funnel data this is the clicked set,
                                                    so it equals auc_cvr)
  auc_ctcvr, gauc_ctcvr, logloss_ctcvr, calibration_ctcvr
                                                    p_ctr·p_cvr vs click·conversion, all
                                                    impressions (needs both heads)
  auc_cvr_entire     synthetic only: p_cvr vs the counterfactual conversion outcome
                     (drawn from the true CVR) of every impression, clicked or not
  oracle_auc_*       synthetic only: the same AUCs scored with the true probabilities,
                     the ceiling for any model on this split
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from recsmith.metrics.auc import auc, gauc
from recsmith.metrics.classification import calibration, logloss
from recsmith.tasks import TaskSpec, esmm_pair

PER_TASK = ("auc", "gauc", "logloss", "calibration")


def lower_is_better(metric: str) -> bool:
    return metric == "loss" or metric.startswith("logloss_")


def metric_names(heads: list[str], synthetic: bool) -> list[str]:
    """Every metric an experiment with these heads reports (besides loss / auc_primary)."""
    targets = list(heads) + (["ctcvr"] if {"ctr", "cvr"} <= set(heads) else [])
    names = [f"{m}_{t}" for t in targets for m in PER_TASK]
    if "cvr" in heads:
        names.append("auc_cvr_masked")
        if synthetic:
            names.append("auc_cvr_entire")
    return names


def selectable_metrics(heads: list[str], synthetic: bool) -> list[str]:
    """Metrics a run may select its best checkpoint by."""
    return [n for n in metric_names(heads, synthetic) if not n.startswith("calibration")] + ["loss"]


def oracle_metrics(labels: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AUCs of the true probabilities: the ceiling for any model on these rows."""
    click, conversion = labels["click"], labels["conversion"]
    clicked = click > 0
    true_ctr, true_cvr = truth["true_ctr"], truth["true_cvr"]
    return {
        "oracle_auc_ctr": auc(click, true_ctr),
        "oracle_auc_cvr": auc(conversion[clicked], true_cvr[clicked]),
        "oracle_auc_ctcvr": auc(click * conversion, true_ctr * true_cvr),
        "oracle_auc_cvr_entire": auc(truth["conversion_if_clicked"], true_cvr),
    }


def target_rows(target: str, probs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                columns: Mapping[str, np.ndarray], tasks: Mapping[str, TaskSpec]):
    """(labels, scores, row mask or None) that a target's metrics are computed on.

    Targets: a head name (its label where observed), "ctcvr" (p_ctr·p_cvr vs
    click·conversion, every row) and "cvr_entire" (p_cvr vs the counterfactual conversion
    of every row, synthetic data only)."""
    if target == "ctcvr":
        ctr, cvr = esmm_pair({name: tasks[name] for name in probs})
        return labels[ctr.label] * labels[cvr.label], probs["ctr"] * probs["cvr"], None
    if target == "cvr_entire":
        return columns["conversion_if_clicked"], probs["cvr"], None
    spec = tasks[target]
    rows = labels[spec.observed_when] > 0 if spec.observed_when else None
    return labels[spec.label], probs[target], rows


def metric_targets(probs: Mapping[str, np.ndarray], tasks: Mapping[str, TaskSpec]) -> list[str]:
    targets = list(probs)
    if esmm_pair({name: tasks[name] for name in probs}):
        targets.append("ctcvr")
    return targets


def funnel_metrics(probs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                   columns: Mapping[str, np.ndarray], tasks: Mapping[str, TaskSpec]) -> dict[str, float]:
    """Metrics for the heads present in `probs` (head name → probabilities).

    `tasks` says which label each head predicts and where it is observed; `columns` may
    hold "user" (for GAUC) and the synthetic truth columns (true_ctr, true_cvr,
    conversion_if_clicked).
    """
    out: dict[str, float] = {}
    user = columns.get("user")
    for target in metric_targets(probs, tasks):
        y, p, rows = target_rows(target, probs, labels, columns, tasks)
        yy, pp = (y, p) if rows is None else (y[rows], p[rows])
        out[f"auc_{target}"] = auc(yy, pp)
        out[f"gauc_{target}"] = gauc(yy, pp, user if rows is None else user[rows]) if user is not None else float("nan")
        out[f"logloss_{target}"] = logloss(yy, pp)
        out[f"calibration_{target}"] = calibration(yy, pp)
    if "cvr" in probs:
        y, p, rows = target_rows("cvr", probs, labels, columns, tasks)
        out["auc_cvr_masked"] = auc(y if rows is None else y[rows], p if rows is None else p[rows])
        if "conversion_if_clicked" in columns:
            out["auc_cvr_entire"] = auc(*target_rows("cvr_entire", probs, labels, columns, tasks)[:2])
    return out
