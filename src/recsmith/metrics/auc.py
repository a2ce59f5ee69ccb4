"""Exact ROC AUC and GAUC (ties count one half), sort-based and vectorised."""

from __future__ import annotations

import numpy as np


def _tie_average_ranks(sorted_keys: tuple[np.ndarray, ...], n: int) -> np.ndarray:
    """1-based ranks of already-sorted rows, tied rows (equal in every key) averaged."""
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in sorted_keys:
        change[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    return np.repeat((starts + ends + 1) / 2.0, ends - starts)


def auc(labels, scores) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + ½ P(tie).

    Mann–Whitney U with average ranks. NaN when only one class is present.
    """
    y = np.asarray(labels).ravel() > 0
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _tie_average_ranks((s[order],), y.size)
    rank_sum = ranks[y[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels, scores, groups) -> float:
    """Group AUC: per-group (per-user) AUC averaged with impression weights, over the
    groups that have both a positive and a negative. NaN when no group qualifies."""
    y = np.asarray(labels).ravel() > 0
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    if not (y.shape == s.shape == g.shape):
        raise ValueError("labels, scores and groups differ in length")
    if y.size == 0:
        return float("nan")
    order = np.lexsort((s, g))  # by group, then by score
    y, s, g = y[order], s[order], g[order]
    group_start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[group_start, y.size])
    global_ranks = _tie_average_ranks((g, s), y.size)  # ties only within a group
    offset = np.repeat(group_start, sizes)
    ranks = global_ranks - offset  # 1-based rank within the group
    n_pos = np.add.reduceat(y.astype(np.int64), group_start)
    n_neg = sizes - n_pos
    rank_sum = np.add.reduceat(np.where(y, ranks, 0.0), group_start)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    group_auc = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float(np.average(group_auc, weights=sizes[ok]))
