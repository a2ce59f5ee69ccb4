"""Is a chain's delta real? Paired bootstrap intervals and DeLong's test for each
comparison, computed from the runs' saved test predictions (`predictions_test.npz`).

Every run of a chain is scored on the same test rows, so a comparison is paired: each
bootstrap resample draws the same rows (for GAUC: the same users, with all their rows)
for both models, and DeLong's test uses the correlation of the two AUCs on those rows.
A delta is "significant" when its 95% interval excludes zero and, for an AUC, DeLong's
p-value is below 0.05 too; otherwise it is "within noise".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from recsmith.metrics.auc import auc
from recsmith.metrics.classification import row_logloss
from recsmith.metrics.funnel import target_rows
from recsmith.metrics.significance import (ResampledAUC, ResampledGAUC, ResampledMean, bootstrap_chunks,
                                           delong, percentile_interval)
from recsmith.run_dir import RunDir
from recsmith.train.predictions import Predictions, load_predictions

LEVEL = 0.95
ALPHA = 0.05
RESAMPLES = 1000
KINDS = ("auc", "gauc", "logloss")


@dataclass(frozen=True)
class DeltaStat:
    metric: str
    baseline: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float | None  # DeLong's, for AUCs
    verdict: str  # "significant" or "within noise"

    def to_json(self) -> dict:
        return asdict(self)


def split_metric(metric: str) -> tuple[str, str]:
    """("auc", "ctr") from "auc_ctr"; auc_cvr_masked is auc_cvr (the same rows)."""
    kind, _, target = metric.partition("_")
    if kind not in KINDS or not target:
        raise ValueError(f"no interval for metric '{metric}' (supported: {', '.join(k + '_*' for k in KINDS)})")
    return kind, target.removesuffix("_masked")


class _Scored:
    """One run's arrays for one metric, and its value on each bootstrap resample."""

    def __init__(self, metric: str, preds: Predictions, group_ids: np.ndarray | None):
        kind, target = split_metric(metric)
        y, p, rows = target_rows(target, preds.probs, preds.labels, preds.columns, preds.tasks)
        self.kind = kind
        self.rows = np.flatnonzero(rows) if rows is not None else None
        if self.rows is not None:
            y, p = y[self.rows], p[self.rows]
        self.y, self.p = y, p
        if kind == "auc":
            self.resampled = ResampledAUC(y, p)
        elif kind == "logloss":
            self.resampled = ResampledMean(row_logloss(y, p))
        else:
            users = preds.columns["user"] if self.rows is None else preds.columns["user"][self.rows]
            self.resampled = ResampledGAUC(y, p, users, group_ids)
        self.samples: list[np.ndarray] = []

    def point(self) -> float:
        if self.kind == "auc":
            return auc(self.y, self.p)
        if self.kind == "logloss":
            return float(self.resampled.values.mean())
        gauc_ = self.resampled
        return float(np.average(gauc_.aucs, weights=gauc_.sizes)) if gauc_.aucs.size else float("nan")

    def add(self, row_counts: np.ndarray, group_counts: np.ndarray) -> None:
        if self.kind == "gauc":
            self.samples.append(self.resampled(group_counts))
        else:
            self.samples.append(self.resampled(row_counts if self.rows is None else row_counts[:, self.rows]))


def comparison_stats(runs: dict[str, RunDir], comparisons, resamples: int = RESAMPLES,
                     seed: int = 0) -> dict[tuple[str, str, str], DeltaStat | str]:
    """{(baseline, candidate, metric): DeltaStat, or the reason there is none}, for every
    metric of every comparison; `runs` maps experiment ids to run dirs. The point values
    are recomputed from the saved predictions: the same numbers as the runs' eval.json."""
    wanted = {(c.baseline, c.candidate, m) for c in comparisons for m in c.metrics}
    preds: dict[str, Predictions] = {}
    for exp_id in {e for b, c, _ in wanted for e in (b, c)}:
        path = runs[exp_id].predictions if exp_id in runs else None
        if path is not None and path.is_file():
            preds[exp_id] = load_predictions(path)
    results: dict[tuple[str, str, str], DeltaStat | str] = {}
    pairs = []
    for base, cand, metric in sorted(wanted):
        reason = _unpairable(preds.get(base), preds.get(cand), base, cand)
        if reason is None:
            try:
                split_metric(metric)
            except ValueError as exc:
                reason = str(exc)
        if reason:
            results[(base, cand, metric)] = reason
        else:
            pairs.append((base, cand, metric))
    by_rows: dict[tuple[str, int], list] = {}  # pairs scored on the same test rows share resamples
    for pair in pairs:
        by_rows.setdefault((preds[pair[0]].dataset, preds[pair[0]].rows), []).append(pair)
    scored: dict[tuple[str, str], _Scored] = {}
    for group in by_rows.values():
        _resample(group, preds, scored, results, resamples, seed)
    for base, cand, metric in pairs:
        if (base, cand, metric) in results:
            continue
        a, b = scored[(base, metric)], scored[(cand, metric)]
        deltas = np.concatenate(b.samples) - np.concatenate(a.samples)
        low, high = percentile_interval(deltas, LEVEL)
        p_value = delong(a.y, a.p, b.p).p_value if a.kind == "auc" else None
        point_a, point_b = a.point(), b.point()
        excludes_zero = low > 0 or high < 0
        significant = excludes_zero and (p_value is None or p_value < ALPHA)
        results[(base, cand, metric)] = DeltaStat(metric, point_a, point_b, point_b - point_a, low, high, p_value,
                                                  "significant" if significant else "within noise")
    return results


def _resample(pairs: list, preds: dict, scored: dict, results: dict, resamples: int, seed: int) -> None:
    """Score every (run, metric) of these pairs on the same bootstrap resamples."""
    reference = preds[pairs[0][0]]
    users = reference.columns.get("user")
    group_ids = np.unique(users) if users is not None else None
    mine = []
    for base, cand, metric in pairs:
        if metric.startswith("gauc") and group_ids is None:
            results[(base, cand, metric)] = "no user column for GAUC"
            continue
        try:
            for exp_id in (base, cand):
                if (exp_id, metric) not in scored:
                    scored[(exp_id, metric)] = _Scored(metric, preds[exp_id], group_ids)
                    mine.append(scored[(exp_id, metric)])
        except KeyError as exc:  # a metric name whose target these runs do not have
            results[(base, cand, metric)] = f"no interval for '{metric}': these runs have no {exc}"
    group_chunks = bootstrap_chunks(group_ids.size, resamples, seed + 1) if group_ids is not None else None
    for row_counts in bootstrap_chunks(reference.rows, resamples, seed):
        group_counts = next(group_chunks) if group_chunks is not None else None
        for item in mine:
            item.add(row_counts, group_counts)


def _unpairable(a: Predictions | None, b: Predictions | None, base: str, cand: str) -> str | None:
    missing = [e for e, p in ((base, a), (cand, b)) if p is None]
    if missing:
        return f"no saved test predictions for {', '.join(missing)}"
    if a.dataset != b.dataset or a.rows != b.rows or any(
            not np.array_equal(a.labels[k], b.labels.get(k)) for k in a.labels):
        return f"{base} and {cand} were tested on different rows"
    return None
