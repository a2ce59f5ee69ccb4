"""Drift and health measures: pure functions on numpy arrays, checked in tests against
scipy and hand-computed values.

Distribution drift of one feature, reference (what the model was trained on) vs current:
  * PSI, the Population Stability Index, Σ (c_i − r_i)·ln(c_i / r_i) over bins, on
    epsilon-smoothed shares (below). Dense features: 10 bins cut at the reference's
    deciles, the outer bins open-ended (plus a bin for NaN). Categorical features: a bin
    for id 0 (missing or unknown), one per top-K id by reference frequency, one "other".
    PSI < 0.1 is stable, 0.1–0.25 moderate drift, ≥ 0.25 major drift.
  * KS (dense): the two-sample Kolmogorov–Smirnov statistic and p-value (scipy). With
    100k+ rows a side the p-value flags shifts far too small to matter: it is reported,
    never alerted on.
  * JS divergence (categorical): Jensen–Shannon divergence of the binned shares (unsmoothed,
    base 2, so in [0, 1]). scipy's `jensenshannon` returns its square root, the JS distance.
Health:
  * missing rate: categorical id 0, dense NaN; raw rows: null or NaN before encoding.
  * calibration: mean predicted / observed rate (`recsmith.metrics.calibration`).
  * AUC / GAUC drop: the relative drop (baseline − current) / baseline against the
    training run's test metric; > 0.5% is P2, > 1% is P1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PSI_MODERATE = 0.10  # PSI ≥ this: moderate drift
PSI_MAJOR = 0.25  # PSI ≥ this: major drift
PSI_EPSILON = 1e-4  # share smoothing: (share + ε) / (1 + bins·ε), so an empty bin is finite
DENSE_BINS = 10
TOP_K_CATEGORIES = 50
AUC_DROP_P2 = 0.005  # relative drop of AUC / GAUC vs the training run's test value
AUC_DROP_P1 = 0.010
MISSING_RATE_RISE_P2 = 0.05  # current missing rate − reference missing rate (absolute)

OK, MODERATE, MAJOR = "ok", "moderate", "major"


@dataclass(frozen=True)
class QuantileBins:
    """Dense bins: (−∞, e_0], (e_0, e_1], ..., (e_last, +∞) and a last bin for NaN.
    `edges` are the distinct inner cut points, increasing."""

    edges: np.ndarray

    @classmethod
    def fit(cls, reference, bins: int = DENSE_BINS) -> "QuantileBins":
        """Cut at the reference's 1/bins quantiles (fewer bins where values tie)."""
        values = np.asarray(reference, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(np.empty(0))
        return cls(np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])))

    @property
    def size(self) -> int:
        return len(self.edges) + 2

    def assign(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64).ravel()
        index = np.searchsorted(self.edges, values, side="left")  # x ≤ e_i → bin i
        return np.where(np.isnan(values), self.size - 1, index)

    def label(self, index: int) -> str:
        if index == self.size - 1:
            return "NaN"
        low = "-inf" if index == 0 else f"{self.edges[index - 1]:.4g}"
        high = "+inf" if index == len(self.edges) else f"{self.edges[index]:.4g}"
        return f"({low}, {high}]"


@dataclass(frozen=True)
class CategoryBins:
    """Categorical bins: 0 = id 0 (missing / unknown), k = the k-th most frequent id of the
    reference (1 ≤ k ≤ K), K + 1 = every other id."""

    categories: np.ndarray  # the top-K ids (never 0), most frequent first

    @classmethod
    def fit(cls, reference, top_k: int = TOP_K_CATEGORIES) -> "CategoryBins":
        """The top_k most frequent non-zero ids of the reference (ties: smaller id first)."""
        ids = np.asarray(reference).ravel().astype(np.int64)
        values, counts = np.unique(ids[ids != 0], return_counts=True)
        order = np.lexsort((values, -counts))[:top_k]
        return cls(values[order])

    @property
    def size(self) -> int:
        return len(self.categories) + 2

    def assign(self, values) -> np.ndarray:
        ids = np.asarray(values).ravel().astype(np.int64)
        if len(self.categories) == 0:
            return np.where(ids == 0, 0, self.size - 1)
        order = np.argsort(self.categories, kind="stable")
        ranked = self.categories[order]
        pos = np.clip(np.searchsorted(ranked, ids), 0, len(ranked) - 1)
        top = np.where(ranked[pos] == ids, order[pos] + 1, self.size - 1)
        return np.where(ids == 0, 0, top)

    def label(self, index: int) -> str:
        if index == 0:
            return "id 0 (missing/unknown)"
        if index == self.size - 1:
            return "other ids"
        return f"id {int(self.categories[index - 1])}"


Bins = QuantileBins | CategoryBins


def bin_shares(values, bins: Bins, epsilon: float = 0.0) -> np.ndarray:
    """Share of `values` in each bin, smoothed as (share + ε) / (1 + bins·ε)."""
    counts = np.bincount(bins.assign(values), minlength=bins.size).astype(np.float64)
    shares = counts / counts.sum() if counts.sum() else counts
    return (shares + epsilon) / (1.0 + bins.size * epsilon)


def psi_terms(reference_shares, current_shares) -> np.ndarray:
    """Each bin's PSI contribution (c − r)·ln(c / r); shares must be positive."""
    r, c = np.asarray(reference_shares, np.float64), np.asarray(current_shares, np.float64)
    return (c - r) * np.log(c / r)


def psi(reference, current, bins: Bins, epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index of `current` against `reference` over `bins` (fitted on
    the reference: `QuantileBins.fit` / `CategoryBins.fit`), on ε-smoothed shares."""
    return float(psi_terms(bin_shares(reference, bins, epsilon), bin_shares(current, bins, epsilon)).sum())


def psi_status(value: float) -> str:
    """ok (< 0.1), moderate (0.1 ≤ PSI < 0.25) or major (≥ 0.25)."""
    return MAJOR if value >= PSI_MAJOR else MODERATE if value >= PSI_MODERATE else OK


@dataclass(frozen=True)
class KS:
    statistic: float  # sup |F_ref − F_cur|
    pvalue: float


def ks(reference, current) -> KS:
    """Two-sample Kolmogorov–Smirnov test on the finite values (scipy.stats.ks_2samp);
    NaN when a side has none."""
    from scipy.stats import ks_2samp

    r = np.asarray(reference, np.float64).ravel()
    c = np.asarray(current, np.float64).ravel()
    r, c = r[np.isfinite(r)], c[np.isfinite(c)]
    if r.size == 0 or c.size == 0:
        return KS(float("nan"), float("nan"))
    result = ks_2samp(r, c)
    return KS(float(result.statistic), float(result.pvalue))


def js_divergence(reference, current, bins: Bins) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of the binned shares, unsmoothed:
    ½ KL(r ‖ m) + ½ KL(c ‖ m), m = (r + c) / 2. (scipy's `jensenshannon` is its square root.)"""
    r, c = bin_shares(reference, bins), bin_shares(current, bins)
    m = 0.5 * (r + c)

    def kl(p: np.ndarray) -> float:
        used = p > 0
        return float((p[used] * np.log2(p[used] / m[used])).sum())

    return float(np.clip(0.5 * kl(r) + 0.5 * kl(c), 0.0, 1.0))


def missing_rate(values, categorical: bool) -> float:
    """Share of missing values in an encoded column: id 0 (categorical) or NaN (dense)."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return float("nan")
    return float((values == 0).mean() if categorical else np.isnan(values.astype(np.float64)).mean())


def raw_missing_rate(column: pa.Array | pa.ChunkedArray) -> float:
    """Share of null (or, in a float column, NaN) values in a raw column, before encoding."""
    if len(column) == 0:
        return float("nan")
    missing = column.null_count
    if pa.types.is_floating(column.type):
        missing += int(pc.sum(pc.is_nan(column)).as_py() or 0)
    return missing / len(column)


def relative_drop(baseline: float, current: float) -> float:
    """(baseline − current) / baseline: 0.01 means the metric lost 1% of its value."""
    return (baseline - current) / baseline


def drop_level(drop: float) -> str:
    """P1 for a relative drop > 1%, P2 for > 0.5%, OK otherwise (NaN: OK)."""
    return "P1" if drop > AUC_DROP_P1 else "P2" if drop > AUC_DROP_P2 else "OK"
