"""Metrics of one evaluation per head, the funnel's composed target, and on synthetic data
the truth. Named by head, so any task names work; the funnel targets are found by the
tasks' roles (recsmith.tasks.funnel_pair), shown here for the funnel's ctr → cvr:

  auc_ctr, gauc_ctr, logloss_ctr, calibration_ctr   a head's p vs its label, on the rows
  auc_cvr, gauc_cvr, logloss_cvr, calibration_cvr   where the label is observed (cvr: clicks)
  auc_cvr_masked                                    the second task's p on the rows whose
                                                    label is observed (= auc_cvr on funnel
                                                    data, kept under its seed-document name)
  auc_ctcvr, gauc_ctcvr, logloss_ctcvr, calibration_ctcvr
                                                    the composed p_ctr·p_cvr vs click·conversion,
                                                    all impressions (needs both heads)
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
from recsmith.tasks import COMPOSED, TaskSpec, funnel_pair

PER_TASK = ("auc", "gauc", "logloss", "calibration")
ENTIRE_TRUTH = "conversion_if_clicked"  # the synthetic funnel's counterfactual second-task outcome


def metric_names(heads: list[str], synthetic: bool, tasks: Mapping[str, TaskSpec] | None = None) -> list[str]:
    """Every metric an experiment with these heads reports (besides loss / auc_primary).
    Without the dataset's `tasks` the funnel's roles are unknown: any two heads may form it."""
    if tasks is None:
        seconds, composed = list(heads), len(heads) > 1
    else:
        pair = funnel_pair(tasks)
        seconds = [pair.second.name] if pair and pair.second.name in heads else []
        composed = funnel_pair(tasks, heads) is not None
    targets = list(heads) + ([COMPOSED] if composed else [])
    names = [f"{m}_{t}" for t in targets for m in PER_TASK]
    for second in seconds:
        names.append(f"auc_{second}_masked")
        if synthetic:
            names.append(f"auc_{second}_entire")
    return names


def selectable_metrics(heads: list[str], synthetic: bool, tasks: Mapping[str, TaskSpec] | None = None) -> list[str]:
    """Metrics a run may select its best checkpoint by."""
    return [n for n in metric_names(heads, synthetic, tasks) if not n.startswith("calibration")] + ["loss"]


def oracle_metrics(labels: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AUCs of the true probabilities: the ceiling for any model on these rows (the synthetic
    funnel's truth columns; {} for data without them)."""
    if "true_ctr" not in truth:
        return {}
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

    Targets: a head name (its label where observed), `COMPOSED` (the funnel pair's
    p_first·p_second vs first·second label, every row), "<second>_masked" (the second
    head where its label is observed) and "<second>_entire" (its p vs the counterfactual
    outcome of every row, synthetic data only)."""
    if target == COMPOSED:
        pair = funnel_pair(tasks, probs)
        return pair.composed_labels(labels), pair.composed_probability(probs), None
    if target.endswith("_entire"):
        return columns[ENTIRE_TRUTH], probs[target.removesuffix("_entire")], None
    spec = tasks[target.removesuffix("_masked")]
    rows = labels[spec.observed_when] > 0 if spec.observed_when else None
    return labels[spec.label], probs[spec.name], rows


def metric_targets(probs: Mapping[str, np.ndarray], tasks: Mapping[str, TaskSpec]) -> list[str]:
    return list(probs) + ([COMPOSED] if funnel_pair(tasks, probs) else [])


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
    pair = funnel_pair(tasks)  # the dataset's roles: a second-task head alone (E0b) has them too
    if pair is not None and pair.second.name in probs:
        second = pair.second.name
        y, p, rows = target_rows(second, probs, labels, columns, tasks)
        out[f"auc_{second}_masked"] = auc(y if rows is None else y[rows], p if rows is None else p[rows])
        if ENTIRE_TRUTH in columns:
            out[f"auc_{second}_entire"] = auc(*target_rows(f"{second}_entire", probs, labels, columns, tasks)[:2])
    return out
