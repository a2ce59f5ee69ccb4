"""Is a difference between two models real? Pure functions on the same test rows.

* `delong`: DeLong, DeLong & Clarke-Pearson (1988) test for two correlated ROC AUCs
  scored on the same rows, in the fast midrank form of Sun & Xu (2014). Two-sided p-value.
* `bootstrap_chunks` + `ResampledAUC` / `ResampledGAUC` / `ResampledMean`: the exact
  nonparametric bootstrap, written as multinomial counts (resample r holds row i
  `counts[r, i]` times). A resample's AUC is then a weighted AUC, computed from one sort of
  the scores shared by every resample, so 1,000 resamples of 200k rows take seconds.
  Pairing: both models are scored on the *same* resamples of the rows. For GAUC the users
  are resampled (every row of a drawn user comes along), since rows of a user are not
  independent.
* `percentile_interval`: the percentile confidence interval of a bootstrap distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recsmith.metrics.auc import group_aucs

CHUNK = 64  # resamples per vectorised block: CHUNK × rows float64 in memory at once


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    delta: float  # auc_b − auc_a
    se: float  # standard error of delta
    z: float
    p_value: float  # two-sided


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy's rankdata 'average')."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    change = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(change)
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def delong_components(labels, scores) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 over positives, V01 over negatives): V10_i = P(s_i > s_neg) + ½P(tie)
    for positive i, V01_j = P(s_pos > s_j) + ½P(tie) for negative j."""
    y = np.asarray(labels).ravel() > 0
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = s[y], s[~y]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both positive and negative rows")
    all_ranks = midranks(np.r_[pos, neg])
    v10 = (all_ranks[:m] - midranks(pos)) / n
    v01 = 1.0 - (all_ranks[m:] - midranks(neg)) / m
    return float(v10.mean()), v10, v01


def delong(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong's test of AUC(b) − AUC(a) = 0 on the same rows."""
    auc_a, v10_a, v01_a = delong_components(labels, scores_a)
    auc_b, v10_b, v01_b = delong_components(labels, scores_b)
    s10 = np.cov(np.vstack([v10_a, v10_b])) if v10_a.size > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01_a, v01_b])) if v01_a.size > 1 else np.zeros((2, 2))
    cov = s10 / v10_a.size + s01 / v01_a.size
    variance = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    delta = auc_b - auc_a
    se = math.sqrt(max(variance, 0.0))
    if se == 0.0:
        z, p = (0.0, 1.0) if delta == 0 else (math.copysign(math.inf, delta), 0.0)
    else:
        z = delta / se
        p = math.erfc(abs(z) / math.sqrt(2.0))
    return DeLongResult(auc_a, auc_b, delta, se, z, p)


def bootstrap_chunks(n: int, resamples: int, seed: int, chunk: int = CHUNK):
    """The bootstrap as multinomial counts, in blocks: int32 [≤ chunk, n] arrays where
    row r says how many times each of n units is drawn in that resample. The same seed
    gives the same resamples, so every model can be scored on the very same ones."""
    rng = np.random.default_rng(seed)
    for first in range(0, resamples, chunk):
        size = min(chunk, resamples - first)
        yield np.stack([np.bincount(rng.integers(0, n, n), minlength=n).astype(np.int32)
                        for _ in range(size)])


class ResampledAUC:
    """Exact AUC of resampled rows: `ResampledAUC(y, s)(counts)` → [R], NaN where a
    resample lacks a class.

    For resample weights w: AUC = Σ_pos w_i · (W_neg(s < s_i) + ½ W_neg(s = s_i)) /
    (W_pos · W_neg). Each negative row falls in one segment between consecutive distinct
    positive scores (or on one of them, a tie), found once with a binary search; a resample
    then needs only one weighted count per segment, taken in row order."""

    def __init__(self, labels, scores):
        y = np.asarray(labels).ravel() > 0
        s = np.asarray(scores).ravel()
        self.pos_rows, self.neg_rows = np.flatnonzero(y), np.flatnonzero(~y)
        thresholds, self.pos_level = np.unique(s[self.pos_rows], return_inverse=True)
        neg_scores = s[self.neg_rows]
        place = np.searchsorted(thresholds, neg_scores, "left")  # distinct positive scores below
        tied = np.zeros(place.size, dtype=bool)
        if thresholds.size:
            tied = (place < thresholds.size) & (thresholds[np.minimum(place, thresholds.size - 1)] == neg_scores)
        self.neg_segment = 2 * place + tied  # 2k: below threshold k (and above k−1); 2k+1: tied with it
        self.segments = 2 * thresholds.size + 2

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        resamples = counts.shape[0]
        index = (self.neg_segment[None, :] + self.segments * np.arange(resamples)[:, None]).ravel()
        per_segment = np.bincount(index, weights=counts[:, self.neg_rows].ravel(),
                                  minlength=resamples * self.segments).reshape(resamples, self.segments)
        cumulative = np.cumsum(per_segment, axis=1)  # negatives up to and including each segment
        below, tied = cumulative[:, 2 * self.pos_level], per_segment[:, 2 * self.pos_level + 1]
        pos_w = counts[:, self.pos_rows]
        wins = (pos_w * (below + 0.5 * tied)).sum(axis=1)
        pairs = pos_w.sum(axis=1) * cumulative[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, wins / pairs, np.nan)


class ResampledGAUC:
    """GAUC of resampled groups: `ResampledGAUC(y, s, groups, group_ids)(group_counts)`,
    where group_counts[r, k] is how many copies of group group_ids[k] resample r holds.
    A drawn group brings all its rows, so each group's AUC is computed once."""

    def __init__(self, labels, scores, groups, group_ids: np.ndarray):
        ids, self.aucs, self.sizes = group_aucs(labels, scores, groups)
        self.position = np.searchsorted(group_ids, ids)
        if ids.size and not np.array_equal(group_ids[np.minimum(self.position, group_ids.size - 1)], ids):
            raise ValueError("group_ids must list every group, sorted")

    def __call__(self, group_counts: np.ndarray) -> np.ndarray:
        weights = group_counts[:, self.position] * self.sizes
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ self.aucs) / weights.sum(axis=1)


class ResampledMean:
    """Mean of per-row values (e.g. each row's log loss) in each resample."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64).ravel()

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        return (counts @ self.values) / counts.sum(axis=1)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
