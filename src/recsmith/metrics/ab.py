"""Online A/B (canary) statistics: is the canary arm worse than the control arm? Pure functions on
counts and per-impression arrays of the two arms, which serve *different* impressions (independent
samples, unlike `significance.delong`, which compares two models on the same rows).

* `wilson_interval`: the Wilson (1927) score interval of a proportion, the interval of the values p
  whose score test |k − np| / √(np(1−p)) ≤ z; Newcombe (1998b), Stat. Med. 17:857, method 3.
* `compare_proportions`: canary − control of a rate (CTR, CVR), with
  - the interval of the difference by Newcombe's hybrid score method (Newcombe 1998, "Interval
    estimation for the difference between independent proportions: comparison of eleven methods",
    Stat. Med. 17:873, method 10): with p̂₁ = canary, p̂₂ = control and their Wilson intervals
    (l₁, u₁), (l₂, u₂), δ = p̂₁ − p̂₂ and
    (δ − √((p̂₁ − l₁)² + (u₂ − p̂₂)²),  δ + √((u₁ − p̂₁)² + (p̂₂ − l₂)²));
  - `p_two_sided`: the pooled two-proportion z-test, z = δ / √(p̄(1−p̄)(1/n₁ + 1/n₂)) with p̄ the
    pooled rate, the same p-value as Pearson's chi-square on the 2×2 table without Yates' correction;
  - `p_noninferior`: the one-sided Wald test of H0: p₁ ≤ (1 − m)·p₂ (the canary is worse by more than
    the relative margin m, e.g. m = 0.05: "more than 5% worse") against H1: p₁ > (1 − m)·p₂, with
    z = (p̂₁ − (1 − m)p̂₂) / √(p̂₁(1−p̂₁)/n₁ + (1 − m)²·p̂₂(1−p̂₂)/n₂) and p = 1 − Φ(z) (unpooled variances,
    the usual choice away from H0's point; with m = 0 it is the one-sided unpooled test of p₁ ≤ p₂).
    A small p_noninferior shows the canary is not worse than the margin.
* `calibration_test`: predicted / observed clicks as `classification.calibration` (Σp / Σy), and the
  z-test of "the predictions are calibrated in total": under H0 the clicks are a sum of independent
  Bernoulli(p_i), mean E = Σp, variance V = Σp(1−p) (a Poisson-binomial), so
  z = (|O − E| − ½) / √V with a continuity correction of ½ (0 when |O − E| ≤ ½), two-sided p.
  The ratio's interval is E / (n·u), E / (n·l) with (l, u) the Wilson interval of the observed rate O/n:
  it treats the true clicks as binomial (a Poisson-binomial has at most that variance, so it is
  conservative) and is not the inversion of the test, whose variance is the model's own.
* `auc_with_interval`: ROC AUC with DeLong's standard error, Var = s²(V10)/m + s²(V01)/n over the
  structural components of `significance.delong_components` (DeLong, DeLong & Clarke-Pearson 1988),
  a normal interval clipped to [0, 1]; `compare_aucs`: canary − control for independent samples,
  se = √(se_a² + se_b²), normal interval and two-sided p.
* `sample_ratio_mismatch`: Pearson's chi-square goodness of fit of the arms' impression counts to the
  configured traffic shares (`scipy.stats.chisquare`); a mismatch at p < 0.001 (Kohavi et al. 2020,
  "Trustworthy Online Controlled Experiments", ch. 21) means the assignment or logging is broken and
  no other number of the experiment can be trusted.
* `arm_summary` / `compare_arms` → `ABReport`, whose `to_dict` is plain JSON.

Degenerate inputs never raise (bad shapes and impossible counts do): a rate of an empty arm, a ratio
over zero clicks, an AUC without both classes are NaN; a p-value with no information to reject H0 on
(an empty arm, zero pooled variance with δ = 0, a NaN AUC) is 1.0, so "p < α" is never true for it.
Where a test's estimated variance is 0 but its statistic is not, p is 0.0 (the limit of the test, as
`significance.delong`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats

from recsmith.metrics.significance import delong_components

NAN = float("nan")
SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class ProportionComparison:
    control_rate: float
    canary_rate: float
    delta: float  # canary_rate − control_rate
    low: float  # Newcombe hybrid score interval of delta
    high: float
    relative_uplift: float  # delta / control_rate (NaN when control_rate is 0 or undefined)
    z: float  # pooled two-proportion z
    p_two_sided: float  # pooled z-test of canary_rate = control_rate
    margin: float  # relative non-inferiority margin
    p_noninferior: float  # one-sided p of H0: canary_rate ≤ (1 − margin) · control_rate


@dataclass(frozen=True)
class CalibrationResult:
    impressions: int
    observed: float  # Σy
    expected: float  # Σp
    ratio: float  # expected / observed = Σp / Σy, as classification.calibration; NaN when Σy = 0
    low: float  # interval of the ratio (see the module docstring); high is inf when Σy = 0
    high: float
    z: float  # continuity-corrected (|O − E| − ½) / √Σp(1−p), ≥ 0
    p_value: float  # two-sided p of "the predictions are calibrated"


@dataclass(frozen=True)
class AUCResult:
    auc: float  # NaN when a class is absent
    se: float  # DeLong
    low: float  # normal interval, clipped to [0, 1]
    high: float
    positives: int
    negatives: int


@dataclass(frozen=True)
class AUCComparison:
    delta: float  # canary − control
    se: float  # √(se_control² + se_canary²): independent samples
    low: float  # normal interval, clipped to [−1, 1]
    high: float
    z: float
    p_value: float  # two-sided


@dataclass(frozen=True)
class SRMResult:
    chi2: float
    p_value: float
    mismatch: bool  # p_value < threshold
    threshold: float
    observed: dict[str, int]
    expected: dict[str, float]  # total × share


@dataclass(frozen=True)
class ArmSummary:
    impressions: int
    clicks: int
    ctr: float
    ctr_low: float  # Wilson
    ctr_high: float
    conversions: int | None  # conversions among clicked impressions; None when not given
    cvr: float | None  # conversions / clicks
    cvr_low: float | None
    cvr_high: float | None
    calibration: CalibrationResult  # of the predicted click probabilities
    auc: AUCResult  # of the predicted click probabilities against the clicks


@dataclass(frozen=True)
class ABReport:
    control: ArmSummary
    canary: ArmSummary
    ctr: ProportionComparison
    cvr: ProportionComparison | None  # None unless both arms have conversions
    auc: AUCComparison
    srm: SRMResult | None  # None unless shares were given
    level: float
    margin: float

    def to_dict(self) -> dict:
        """Nested plain dict: Python floats / ints / bools / str / None only, NaN and ±inf as None,
        so `json.dumps(report.to_dict(), allow_nan=False)` works (and the JSON is valid for browsers)."""
        return _plain(asdict(self))


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be a non-negative whole number, not {value!r}")
    return int(value)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion successes / n: centre (p̂ + z²/2n) / (1 + z²/n),
    half-width z / (1 + z²/n) · √(p̂(1−p̂)/n + z²/4n²). (nan, nan) when n = 0."""
    k, n = _count("successes", successes), _count("n", n)
    if k > n:
        raise ValueError(f"successes ({k}) exceed trials ({n})")
    z = _z(level)
    if n == 0:
        return NAN, NAN
    p = k / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_proportions(control_successes: int, control_n: int, canary_successes: int, canary_n: int,
                        level: float = 0.95, margin: float = 0.0) -> ProportionComparison:
    """Canary vs control rate (see the module docstring for each field's test). An empty arm gives
    NaN rates, delta and interval and p-values of 1.0; a control rate of 0 a NaN relative uplift."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin is a relative share in [0, 1), not {margin}")
    l2, u2 = wilson_interval(control_successes, control_n, level)
    l1, u1 = wilson_interval(canary_successes, canary_n, level)
    x2, n2, x1, n1 = int(control_successes), int(control_n), int(canary_successes), int(canary_n)
    if n1 == 0 or n2 == 0:
        p2, p1 = (x2 / n2 if n2 else NAN), (x1 / n1 if n1 else NAN)
        return ProportionComparison(p2, p1, NAN, NAN, NAN, NAN, 0.0, 1.0, margin, 1.0)
    p2, p1 = x2 / n2, x1 / n1
    delta = p1 - p2
    low = delta - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = delta + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    uplift = delta / p2 if p2 > 0 else NAN

    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:  # pooled rate 0 or 1: both arms equal, delta = 0
        z, p_two = 0.0, 1.0
    else:
        z = delta / se
        p_two = _two_sided(z)

    keep = 1.0 - margin
    shifted = p1 - keep * p2
    se_ni = math.sqrt(p1 * (1.0 - p1) / n1 + keep * keep * p2 * (1.0 - p2) / n2)
    if se_ni == 0.0:
        p_ni = 0.0 if shifted > 0 else 1.0
    else:
        p_ni = 0.5 * math.erfc(shifted / se_ni / math.sqrt(2.0))  # 1 − Φ(z)
    return ProportionComparison(p2, p1, delta, low, high, uplift, z, p_two, margin, p_ni)


def _binary(name: str, values, size: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if size is not None and array.size != size:
        raise ValueError(f"{name} has {array.size} values, the predictions {size}")
    if array.size and not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be 0/1")
    return array


def _probabilities(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size and (not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("predicted probabilities must be finite and in [0, 1]")
    return p


def calibration_test(probs, labels, level: float = 0.95) -> CalibrationResult:
    """Observed vs expected clicks of a set of predictions (see the module docstring). With no rows:
    ratio and interval NaN, p = 1.0. With zero clicks: ratio NaN, interval (E / (n·u), inf)."""
    p = _probabilities(probs)
    y = _binary("labels", labels, p.size)
    n = p.size
    observed, expected = float(y.sum()), float(p.sum())
    variance = float((p * (1.0 - p)).sum())
    gap = max(abs(observed - expected) - 0.5, 0.0)
    if variance == 0.0:
        z, p_value = (0.0, 1.0) if gap == 0.0 else (math.inf, 0.0)
    else:
        z = gap / math.sqrt(variance)
        p_value = _two_sided(z)
    ratio = expected / observed if observed > 0 else NAN
    low_rate, high_rate = wilson_interval(int(observed), n, level)
    if n == 0:
        low, high = NAN, NAN
    else:
        low = expected / (n * high_rate)
        high = expected / (n * low_rate) if low_rate > 0 else math.inf
    return CalibrationResult(n, observed, expected, ratio, low, high, z, p_value)


def auc_with_interval(labels, scores, level: float = 0.95) -> AUCResult:
    """ROC AUC (ties ½) and DeLong's se from the structural components V10 (positives) and V01
    (negatives): Var = s²(V10)/m + s²(V01)/n with sample variances (a class of one row adds 0).
    NaN AUC, se and interval when a class is absent."""
    y = _binary("labels", labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size != y.size:
        raise ValueError(f"labels has {y.size} values, scores {s.size}")
    m, n = int(y.sum()), int(y.size - y.sum())
    if m == 0 or n == 0:
        return AUCResult(NAN, NAN, NAN, NAN, m, n)
    value, v10, v01 = delong_components(y, s)
    variance = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    se = math.sqrt(max(float(variance), 0.0))
    half = _z(level) * se
    return AUCResult(value, se, max(0.0, value - half), min(1.0, value + half), m, n)


def compare_aucs(control: AUCResult, canary: AUCResult, level: float = 0.95) -> AUCComparison:
    """canary.auc − control.auc for two independent samples: se = √(se_a² + se_b²), normal interval
    (clipped to [−1, 1]), two-sided p. NaN delta and interval, p = 1.0, when either AUC is NaN."""
    delta = canary.auc - control.auc
    half_z = _z(level)
    if math.isnan(delta):
        return AUCComparison(NAN, NAN, NAN, NAN, 0.0, 1.0)
    se = math.hypot(control.se, canary.se)
    if se == 0.0:
        z, p = (0.0, 1.0) if delta == 0 else (math.copysign(math.inf, delta), 0.0)
    else:
        z = delta / se
        p = _two_sided(z)
    return AUCComparison(delta, se, max(-1.0, delta - half_z * se), min(1.0, delta + half_z * se), z, p)


def sample_ratio_mismatch(counts: dict[str, int], expected_shares: dict[str, float],
                          threshold: float = SRM_THRESHOLD) -> SRMResult:
    """Chi-square goodness of fit of the arms' counts to the configured shares (normalised to sum
    to 1, so {"control": 95, "canary": 5} works). An arm with share 0 must have count 0 (else chi2 =
    inf, p = 0); with no impressions at all chi2 is NaN and p 1.0 (no evidence, no mismatch)."""
    if set(counts) != set(expected_shares):
        raise ValueError(f"counts name arms {sorted(counts)}, shares {sorted(expected_shares)}")
    arms = sorted(counts)
    observed = {arm: _count(f"count of {arm}", counts[arm]) for arm in arms}
    shares = np.array([float(expected_shares[arm]) for arm in arms])
    if not np.isfinite(shares).all() or (shares < 0).any() or shares.sum() <= 0:
        raise ValueError(f"shares must be non-negative and not all 0: {expected_shares}")
    total = sum(observed.values())
    expected_counts = total * shares / shares.sum()
    expected = {arm: float(e) for arm, e in zip(arms, expected_counts)}
    obs = np.array([observed[arm] for arm in arms], dtype=np.float64)
    if total == 0:
        return SRMResult(NAN, 1.0, False, threshold, observed, expected)
    if ((expected_counts == 0) & (obs > 0)).any():
        return SRMResult(math.inf, 0.0, True, threshold, observed, expected)
    live = expected_counts > 0
    if live.sum() < 2:  # one arm holds all the traffic it should: nothing to test
        return SRMResult(0.0, 1.0, False, threshold, observed, expected)
    chi2, p = stats.chisquare(obs[live], expected_counts[live])
    return SRMResult(float(chi2), float(p), bool(p < threshold), threshold, observed, expected)


def arm_summary(probs, clicks, conversions=None, level: float = 0.95) -> ArmSummary:
    """One arm's impressions: predicted click probabilities, 0/1 clicks and optionally per-impression
    conversions, read only where the impression was clicked (other entries, NaN or anything, are
    ignored; on clicked ones they must be 0/1)."""
    p = _probabilities(probs)
    y = _binary("clicks", clicks, p.size)
    n, k = int(p.size), int(y.sum())
    ctr_low, ctr_high = wilson_interval(k, n, level)
    conv = cvr = cvr_low = cvr_high = None
    if conversions is not None:
        c = np.asarray(conversions, dtype=np.float64).ravel()
        if c.size != n:
            raise ValueError(f"conversions has {c.size} values, the predictions {n}")
        conv = int(_binary("conversions of clicked impressions", c[y > 0]).sum())
        cvr = conv / k if k else NAN
        cvr_low, cvr_high = wilson_interval(conv, k, level)
    return ArmSummary(n, k, k / n if n else NAN, ctr_low, ctr_high, conv, cvr, cvr_low, cvr_high,
                      calibration_test(p, y, level), auc_with_interval(y, p, level))


def compare_arms(control: ArmSummary, canary: ArmSummary, margin: float = 0.0, level: float = 0.95,
                 shares: dict[str, float] | None = None) -> ABReport:
    """The A/B report of two arm summaries: CTR and (when both arms have conversions) CVR compared by
    `compare_proportions` with the same relative margin, AUCs by `compare_aucs`, and, when the
    configured shares are given as {"control": .., "canary": ..}, the sample-ratio-mismatch check of
    the impressions."""
    ctr = compare_proportions(control.clicks, control.impressions, canary.clicks, canary.impressions, level, margin)
    cvr = None
    if control.conversions is not None and canary.conversions is not None:
        cvr = compare_proportions(control.conversions, control.clicks, canary.conversions, canary.clicks, level, margin)
    srm = None
    if shares is not None:
        srm = sample_ratio_mismatch({"control": control.impressions, "canary": canary.impressions}, shares)
    return ABReport(control, canary, ctr, cvr, compare_aucs(control.auc, canary.auc, level), srm, level, margin)


def _plain(value):
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
