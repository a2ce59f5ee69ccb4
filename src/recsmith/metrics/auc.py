"""Exact ROC AUC and GAUC (ties count one half), sort-based and vectorised.

Speed (10M predictions, one core; bench/metrics_speed.py): AUC sorts each class with
numpy's SIMD sort and counts with binary searches, no argsort; GAUC packs (group, score,
label) into one uint64 per row and sorts those, when the scores are exact in float32
(model probabilities are) and the groups are ids in [0, 2³¹); otherwise it falls back to
a lexsort, which is exact for any input and about four times slower.
"""

from __future__ import annotations

import numpy as np


def auc(labels, scores) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + ½ P(tie).
    NaN when only one class is present."""
    y = np.asarray(labels).ravel() > 0
    s = np.asarray(scores).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    positives, negatives = np.sort(s[y]), np.sort(s[~y])
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    below = np.searchsorted(negatives, positives, "left")  # negatives scored lower
    not_above = np.searchsorted(negatives, positives, "right")  # ... or tied
    wins = below.sum(dtype=np.float64) + 0.5 * (not_above - below).sum(dtype=np.float64)
    return float(wins / (positives.size * negatives.size))


def gauc(labels, scores, groups) -> float:
    """Group AUC: per-group (per-user) AUC averaged with impression weights, over the
    groups that have both a positive and a negative. NaN when no group qualifies."""
    _, aucs, sizes = group_aucs(labels, scores, groups)
    return float(np.average(aucs, weights=sizes)) if aucs.size else float("nan")


def group_aucs(labels, scores, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group ids, AUC, rows) of every group with both a positive and a negative, by id."""
    y = np.asarray(labels).ravel() > 0
    s = np.asarray(scores).ravel()
    g = np.asarray(groups).ravel()
    if not (y.shape == s.shape == g.shape):
        raise ValueError("labels, scores and groups differ in length")
    if y.size == 0:
        return np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)
    packed = _packed_keys(y, s, g)
    if packed is not None:
        key = np.sort(packed)  # by group, then score, then label
        y = (key & np.uint64(1)).astype(bool)
        group_key, tie_key = (key >> np.uint64(33)).astype(np.int64), key >> np.uint64(1)
    else:
        order = np.lexsort((s, g))
        y, s, g = y[order], s[order], g[order]
        group_key, tie_key = g, None
    group_start = _starts(group_key)
    sizes = np.diff(np.r_[group_start, y.size])
    tie_start = _starts(tie_key) if tie_key is not None else np.flatnonzero(_changes(g) | _changes(s))
    tie_end = np.r_[tie_start[1:], y.size]
    ranks = np.repeat((tie_start + tie_end + 1) / 2.0, tie_end - tie_start)  # 1-based, ties averaged
    ranks -= np.repeat(group_start, sizes)  # rank within the group
    n_pos = np.add.reduceat(y.astype(np.int64), group_start)
    n_neg = sizes - n_pos
    rank_sum = np.add.reduceat(np.where(y, ranks, 0.0), group_start)
    ok = (n_pos > 0) & (n_neg > 0)
    aucs = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return group_key[group_start][ok], aucs, sizes[ok]


def _packed_keys(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> np.ndarray | None:
    """group << 33 | order-preserving float32 bits of the score << 1 | label, when exact."""
    if not np.issubdtype(g.dtype, np.integer) or (g.size and (g.min() < 0 or g.max() >= 2**31)):
        return None
    s32 = s.astype(np.float32)
    if s.dtype != np.float32 and not np.array_equal(s32, s):
        return None  # float32 would merge distinct scores into ties
    bits = (s32 + np.float32(0.0)).view(np.uint32).astype(np.uint64)  # + 0.0 turns -0.0 into 0.0, its tie
    negative = (bits >> np.uint64(31)) == 1
    ordered = np.where(negative, ~bits & np.uint64(0xFFFFFFFF), bits | np.uint64(0x80000000))
    return (g.astype(np.uint64) << np.uint64(33)) | (ordered << np.uint64(1)) | y.astype(np.uint64)


def _changes(values: np.ndarray) -> np.ndarray:
    change = np.ones(values.size, bool)
    change[1:] = values[1:] != values[:-1]
    return change


def _starts(values: np.ndarray) -> np.ndarray:
    return np.flatnonzero(_changes(values))
