"""Sanity alarms: numbers that usually mean a bug rather than a result. Summaries, the
chain's table, delta analyses, reports and findings show them beside the numbers they
apply to, and findings never call a delta a gain when one applies to it.

  at / below chance  an AUC or GAUC whose 95% bootstrap interval reaches down to 0.5:
                     the model ranks no better than a coin (below: inverted labels?)
  leak               an AUC or GAUC ≥ LEAK_AUC: a perfect ranking, usually a label leak
  correlated tasks   two heads whose test predictions correlate above CORRELATED (Pearson):
                     one output served as two tasks (torch-rechub issue #50)
  calibration        mean prediction / observed rate outside CALIBRATION_RANGE: wrong base
                     rate (uncorrected negative sampling, a wrong label or mask)
  one class          a classifier that predicts the same class for every test row (its
                     recall 1, every other class's 0): it learned the base rate, nothing else

Each alarm names the metrics it applies to: an interval alarm its own metric, a leak or a
correlation every metric of the task(s), a calibration alarm the task's calibration and
log loss (the numbers a wrong base rate distorts; the ranking metrics are unaffected).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np

from recsmith.experiments.columns import split_name
from recsmith.train.predictions import Predictions

CHANCE = 0.5
LEAK_AUC = 0.999
CORRELATED = 0.999
CALIBRATION_RANGE = (0.5, 2.0)
AUC_FAMILIES = ("auc", "gauc")


@dataclass(frozen=True)
class Alarm:
    kind: str  # at_chance | below_chance | leak | correlated_tasks | calibration | one_class
    metrics: tuple[str, ...]  # what it applies to
    message: str

    def to_json(self) -> dict:
        return {**asdict(self), "metrics": list(self.metrics)}


def run_alarms(test: dict, intervals: dict, preds: Predictions | None) -> list[Alarm]:
    """Every alarm of one run, from its test metrics, their intervals and its predictions."""
    return [*chance_alarms(test, intervals), *leak_alarms(test), *calibration_alarms(test),
            *correlation_alarms(preds, test), *one_class_alarms(test)]


def _aucs(test: dict) -> list[str]:
    """The AUCs: ranking heads' (auc_<task>, gauc_<task>) and a text classifier's (auc)."""
    return [m for m in test if (split_name(m)[0] in AUC_FAMILIES or m == "auc") and m != "auc_primary"
            and _finite(test[m])]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def task_metrics(test: dict, task: str) -> tuple[str, ...]:
    """The metrics of one task, its variants (cvr_masked, cvr_entire) included."""
    return tuple(m for m in test if (t := split_name(m)[1]) == task or t.startswith(task + "_"))


def _same_numbers(test: dict, intervals: dict, metrics: list[str]) -> list[tuple[str, ...]]:
    """The metrics grouped by identical value and interval (auc_cvr_masked is auc_cvr on
    funnel data), so one alarm names them together."""
    groups: dict[tuple, list[str]] = {}
    for metric in metrics:
        groups.setdefault((test[metric], tuple(intervals.get(metric, ()))), []).append(metric)
    return [tuple(g) for g in groups.values()]


def chance_alarms(test: dict, intervals: dict) -> list[Alarm]:
    out = []
    for group in _same_numbers(test, intervals, _aucs(test)):
        low, high = intervals.get(group[0], (math.nan, math.nan))
        if not (_finite(low) and low <= CHANCE):
            continue
        names, where = ", ".join(group), f"95% CI [{low:.4f}, {high:.4f}]"
        if high >= CHANCE:
            out.append(Alarm("at_chance", group, f"{names} at chance: {where} contains {CHANCE}"))
        else:
            out.append(Alarm("below_chance", group, f"{names} below chance: {where} lies under {CHANCE} "
                                                    "(inverted labels or scores?)"))
    return out


def leak_alarms(test: dict) -> list[Alarm]:
    out = []
    for group in _same_numbers(test, {}, [m for m in _aucs(test) if test[m] >= LEAK_AUC]):
        applies = tuple(dict.fromkeys(m for name in group for m in task_metrics(test, split_name(name)[1])))
        out.append(Alarm("leak", applies, f"{', '.join(group)} = {test[group[0]]:.4f} (≥ {LEAK_AUC}): a perfect "
                                          "ranking usually means a label leak"))
    return out


def calibration_alarms(test: dict) -> list[Alarm]:
    low, high = CALIBRATION_RANGE
    out = []
    for metric, value in test.items():
        family, task = split_name(metric)
        if family == "calibration" and _finite(value) and not low <= value <= high:
            applies = tuple(m for m in (metric, f"logloss_{task}") if m in test)
            out.append(Alarm("calibration", applies, f"{metric} = {value:.3f}: mean prediction / observed rate "
                                                     f"outside [{low}, {high}]"))
    return out


def correlation_alarms(preds: Predictions | None, test: dict) -> list[Alarm]:
    if preds is None:
        return []
    out = []
    for a, b in combinations(preds.probs, 2):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = float(np.corrcoef(preds.probs[a], preds.probs[b])[0, 1])
        if math.isfinite(r) and r > CORRELATED:
            out.append(Alarm("correlated_tasks", task_metrics(test, a) + task_metrics(test, b),
                             f"{a} and {b} predictions correlate {r:.5f} (> {CORRELATED}): one output "
                             "serving two tasks? (torch-rechub #50)"))
    return out


def one_class_alarms(test: dict) -> list[Alarm]:
    """A text classifier (its metrics have macro_f1 and recall_<class>) that predicted one
    class for every test row."""
    if "macro_f1" not in test:
        return []
    recalls = {m.removeprefix("recall_"): v for m, v in test.items() if m.startswith("recall_") and _finite(v)}
    always = [c for c, v in recalls.items() if v == 1.0]
    if len(recalls) < 2 or len(always) != 1 or any(v != 0.0 for c, v in recalls.items() if c != always[0]):
        return []
    applies = tuple(m for m in ("accuracy", "macro_f1", *(f"{k}_{c}" for c in recalls
                                                          for k in ("precision", "recall", "f1"))) if m in test)
    return [Alarm("one_class", applies, f"predicts '{always[0]}' for every test row: the base rate, nothing learned")]


def applying(alarms: list[dict], metric: str) -> list[dict]:
    """The alarms (as in summary rows) that apply to a metric."""
    return [a for a in alarms if metric in a["metrics"]]
