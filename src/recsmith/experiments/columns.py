"""Metric columns derived from the metric names runs report, so summaries, reports, plots
and the tracker work for any task names (`auc_income`, `ndcg_10`, `logloss_like`, ...).

A name is `<family>_<target>`: the family is one of FAMILIES (`mrr` and `loss` stand
alone), the target a task (`ctr`, `income`, a variant such as `cvr_masked`) or a top-K
cutoff. The order, the same everywhere:

  1. `auc_primary` (the run's selection metric under one name);
  2. by family in FAMILIES order; within a family by task, in the order the runs first
     list them (eval.json lists a run's metrics task by task), cutoffs numerically;
  3. names of no known family, as first listed;
  4. `oracle_*` (synthetic data's ceilings), ordered the same way among themselves.
"""

from __future__ import annotations

import math
from typing import Iterable

PRIMARY = "auc_primary"
ORACLE = "oracle_"
FAMILIES = ("auc", "gauc", "logloss", "calibration", "ndcg", "hr", "mrr", "precision", "loss")
TOPK_FAMILIES = ("ndcg", "hr", "mrr", "precision")
HEADLINE_CUTOFF = 10  # the top-K cutoff tables show when a run reports several
TEXT_HEADLINE = ("accuracy", "macro_f1", "auc")  # a text classifier's headline metrics (names without a task)


def split_name(metric: str) -> tuple[str, str]:
    """(family, target): ("auc", "income"), ("ndcg", "10"), ("mrr", ""); ("", name) when
    the name has no known family."""
    if metric in ("mrr", "loss"):
        return metric, ""
    family, _, target = metric.partition("_")
    return (family, target) if family in FAMILIES and target else ("", metric)


def is_topk(metric: str) -> bool:
    return split_name(metric)[0] in TOPK_FAMILIES


def ordered_metrics(names: Iterable[str]) -> list[str]:
    """The distinct names in the summary's column order (see the module docstring);
    `names` in the order the runs list them, which sets the task order."""
    names = list(dict.fromkeys(names))
    plain = [n for n in names if not n.startswith(ORACLE)]
    oracle = [n.removeprefix(ORACLE) for n in names if n.startswith(ORACLE)]
    return _ordered(plain, names) + [ORACLE + n for n in _ordered(oracle, names)]


def _ordered(names: list[str], listed: list[str]) -> list[str]:
    first_seen: dict[str, int] = {}
    for name in listed:
        first_seen.setdefault(split_name(name.removeprefix(ORACLE))[1], len(first_seen))

    def key(name: str):
        if name == PRIMARY:
            return (0, 0, 0, 0)
        family, target = split_name(name)
        if not family:
            return (2, 0, 0, names.index(name))
        cutoff = int(target) if target.isdigit() else 0
        return (1, FAMILIES.index(family), first_seen[target] if not target.isdigit() else 0, cutoff)

    return sorted(names, key=key)


def headline_metrics(columns: list[str], families: tuple[str, ...]) -> list[str]:
    """The columns of these families a table shows: top-K ones at HEADLINE_CUTOFF only
    (or each family's smallest cutoff when no run reports that one), no `auc_primary`, no oracle."""
    chosen = []
    for name in columns:
        family, target = split_name(name)
        if family not in families or name == PRIMARY:
            continue
        if target.isdigit():
            cutoffs = sorted(int(split_name(c)[1]) for c in columns if split_name(c)[0] == family)
            if int(target) != (HEADLINE_CUTOFF if HEADLINE_CUTOFF in cutoffs else cutoffs[0]):
                continue
        chosen.append(name)
    return chosen


def informative(rows: list[dict], columns: list[str]) -> list[str]:
    """The columns with a number in some row, less any that repeat an earlier one in every
    row (auc_cvr_masked is auc_cvr on funnel data)."""
    def values(column):
        return [r.get(column) if _finite(r.get(column)) else None for r in rows]

    kept: list[str] = []
    for column in columns:
        mine = values(column)
        if any(v is not None for v in mine) and all(mine != values(other) for other in kept):
            kept.append(column)
    return kept


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
