"""A/B statistics of the canary release: closed forms and textbook values, scipy / scikit-learn
references, brute force on small inputs, and simulated A/A experiments for the false-positive rates."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from recsmith.metrics import calibration
from recsmith.metrics.ab import (ABReport, AUCResult, arm_summary, auc_with_interval, calibration_test, compare_arms,
                                 compare_aucs, compare_proportions, sample_ratio_mismatch, wilson_interval)

Z95 = 1.959963984540054
EXPERIMENTS = 2000
# 3 binomial standard deviations of a 5% rejection rate over 2,000 experiments: √(.05·.95/2000) ≈ 0.0049
AA_LOW, AA_HIGH = 0.035, 0.065


# ---------------------------------------------------------------- Wilson


def test_wilson_closed_form_and_textbook_case():
    # Newcombe (1998b), Stat. Med. 17:857, Table I: 81/263, score method → 0.2553 to 0.3662
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # the same interval written as the roots of (k − np)² = z² np(1 − p)
    k, n = 81, 263
    root = Z95 * math.sqrt(Z95 ** 2 + 4 * k * (n - k) / n)
    assert low == pytest.approx((2 * k + Z95 ** 2 - root) / (2 * (n + Z95 ** 2)), abs=1e-12)
    assert high == pytest.approx((2 * k + Z95 ** 2 + root) / (2 * (n + Z95 ** 2)), abs=1e-12)
    # zero successes: the interval is [0, z²/(n + z²)]
    assert wilson_interval(0, 50) == pytest.approx((0.0, Z95 ** 2 / (50 + Z95 ** 2)), abs=1e-12)


@pytest.mark.parametrize("k, n, level", [(0, 10, 0.95), (1, 7, 0.9), (37, 1000, 0.95), (500, 1000, 0.99),
                                         (1000, 1000, 0.95), (3, 100000, 0.8)])
def test_wilson_matches_scipy(k, n, level):
    reference = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    assert wilson_interval(k, n, level) == pytest.approx((reference.low, reference.high), abs=1e-12)


def test_wilson_empty_and_impossible_counts():
    low, high = wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)
    for k, n in ((5, 4), (-1, 10), (1.5, 10)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    with pytest.raises(ValueError):
        wilson_interval(1, 10, level=1.0)


# ---------------------------------------------------------------- two proportions


@pytest.mark.parametrize("control, canary", [((48, 80), (56, 70)), ((500, 10000), (560, 10000)),
                                             ((120, 3000), (95, 2800)), ((3, 40), (0, 35))])
def test_pooled_z_test_equals_chi_square_without_yates(control, canary):
    result = compare_proportions(*control, *canary)
    table = [[canary[0], canary[1] - canary[0]], [control[0], control[1] - control[0]]]
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert result.p_two_sided == pytest.approx(p, rel=1e-9)
    assert result.z ** 2 == pytest.approx(chi2, rel=1e-9)
    assert math.copysign(1, result.z) == math.copysign(1, result.delta)


# Newcombe (1998), Stat. Med. 17:873, Table II, method 10, examples (a), (b), (d), (e), (g): (canary, control)
# → (delta, low, high). Each checked by hand from the paper's formula with z = 1.95996 (see the module).
@pytest.mark.parametrize("canary, control, expected", [
    ((56, 70), (48, 80), (0.2, 0.0524, 0.3339)),
    ((9, 10), (3, 10), (0.6, 0.1705, 0.8090)),
    ((5, 56), (0, 29), (0.0893, -0.0381, 0.1926)),
    ((0, 10), (0, 20), (0.0, -0.1611, 0.2775)),
    ((10, 10), (0, 20), (1.0, 0.6791, 1.0)),
])
def test_newcombe_interval_matches_the_paper(canary, control, expected):
    result = compare_proportions(*control, *canary)
    assert (result.delta, result.low, result.high) == pytest.approx(expected, abs=5e-5)
    assert result.canary_rate == canary[0] / canary[1] and result.control_rate == control[0] / control[1]


def test_newcombe_interval_is_the_wilson_square_and_add():
    control, canary = (130, 4000), (170, 4100)
    result = compare_proportions(*control, *canary, level=0.9)
    (l1, u1), (l2, u2) = wilson_interval(*canary, level=0.9), wilson_interval(*control, level=0.9)
    p1, p2 = canary[0] / canary[1], control[0] / control[1]
    assert result.low == pytest.approx(p1 - p2 - math.hypot(p1 - l1, u2 - p2), abs=1e-12)
    assert result.high == pytest.approx(p1 - p2 + math.hypot(u1 - p1, p2 - l2), abs=1e-12)
    assert result.relative_uplift == pytest.approx((p1 - p2) / p2)


def test_noninferiority_p_value():
    control, canary, margin = (1000, 20000), (960, 20000), 0.05
    result = compare_proportions(*control, *canary, margin=margin)
    p1, p2 = 0.048, 0.05
    se = math.sqrt(p1 * (1 - p1) / 20000 + (1 - margin) ** 2 * p2 * (1 - p2) / 20000)
    assert result.p_noninferior == pytest.approx(stats.norm.sf((p1 - (1 - margin) * p2) / se), rel=1e-9)
    # 4% worse on 20k impressions: not shown non-inferior within 5%, and a smaller margin only makes it harder
    assert result.p_noninferior > 0.05
    assert compare_proportions(*control, *canary, margin=0.0).p_noninferior > result.p_noninferior
    # 1% better with 400k impressions per arm: non-inferior within 5%
    big = compare_proportions(20000, 400000, 20200, 400000, margin=margin)
    assert big.p_noninferior < 0.001
    # margin 0 is the one-sided unpooled test of canary ≤ control
    flat = compare_proportions(*control, *canary)
    se0 = math.sqrt(p1 * (1 - p1) / 20000 + p2 * (1 - p2) / 20000)
    assert flat.p_noninferior == pytest.approx(stats.norm.sf((p1 - p2) / se0), rel=1e-9)
    with pytest.raises(ValueError):
        compare_proportions(*control, *canary, margin=1.0)


def test_proportions_with_zero_and_empty_counts():
    none = compare_proportions(0, 5000, 0, 5000, margin=0.05)
    assert (none.delta, none.z, none.p_two_sided, none.p_noninferior) == (0.0, 0.0, 1.0, 1.0)
    assert math.isnan(none.relative_uplift) and none.low < 0 < none.high
    dead_control = compare_proportions(0, 1000, 30, 1000)  # relative uplift over a zero rate
    assert math.isnan(dead_control.relative_uplift) and dead_control.p_two_sided < 1e-6
    for empty in (compare_proportions(0, 0, 10, 100), compare_proportions(10, 100, 0, 0)):
        assert math.isnan(empty.delta) and math.isnan(empty.low) and math.isnan(empty.high)
        assert empty.p_two_sided == 1.0 and empty.p_noninferior == 1.0
    assert compare_proportions(0, 0, 10, 100).canary_rate == 0.1


# ---------------------------------------------------------------- simulated A/A and power


def test_aa_false_positive_rates_of_the_proportion_tests():
    rng = np.random.default_rng(20240611)
    n = 4000
    control, canary = rng.binomial(n, 0.05, EXPERIMENTS), rng.binomial(n, 0.05, EXPERIMENTS)
    results = [compare_proportions(int(a), n, int(b), n, margin=0.0) for a, b in zip(control, canary)]
    two_sided = np.mean([r.p_two_sided < 0.05 for r in results])
    noninferior = np.mean([r.p_noninferior < 0.05 for r in results])  # one-sided, at H0's boundary
    outside = np.mean([not (r.low <= 0.0 <= r.high) for r in results])  # Newcombe coverage of the true 0
    assert AA_LOW <= two_sided <= AA_HIGH, two_sided
    assert AA_LOW <= noninferior <= AA_HIGH, noninferior
    assert AA_LOW <= outside <= AA_HIGH, outside


def test_power_against_a_thirty_percent_worse_canary():
    rng = np.random.default_rng(7)
    n, runs = 5000, 400
    control, canary = rng.binomial(n, 0.05, runs), rng.binomial(n, 0.035, runs)
    results = [compare_proportions(int(a), n, int(b), n, margin=0.05) for a, b in zip(control, canary)]
    assert np.mean([r.p_two_sided < 0.05 for r in results]) >= 0.9  # about 0.96 by the normal approximation
    assert np.mean([r.high < 0 for r in results]) >= 0.9
    assert np.mean([r.p_noninferior < 0.05 for r in results]) == 0.0


def test_aa_false_positive_rate_of_the_calibration_test():
    # the continuity correction makes the test a little conservative, by less the more clicks: with ~200
    # expected clicks (sd ≈ 13.6) its level is about 2·Φ(−1.96 − 0.5/13.6) ≈ 0.046
    rng = np.random.default_rng(11)
    n = 4000
    rejected, covered = 0, 0
    for _ in range(EXPERIMENTS):
        p = rng.beta(2.0, 38.0, n)  # mean CTR 0.05, varied per impression
        result = calibration_test(p, rng.random(n) < p)
        rejected += result.p_value < 0.05
        covered += result.low <= 1.0 <= result.high  # the true ratio: E[clicks] = Σp
    assert AA_LOW <= rejected / EXPERIMENTS <= AA_HIGH, rejected / EXPERIMENTS
    assert covered / EXPERIMENTS >= 0.94  # conservative interval of the ratio: covers 1 at least ~95%


def test_calibration_test_catches_doubled_predictions():
    rng = np.random.default_rng(3)
    p = rng.beta(2.0, 38.0, 5000)
    y = rng.random(5000) < p
    honest, doubled = calibration_test(p, y), calibration_test(2 * p, y)
    assert doubled.p_value < 1e-12 and honest.p_value > 0.01
    assert doubled.ratio == pytest.approx(2 * honest.ratio)
    assert doubled.low > 1.5 and honest.low < 1.0 < honest.high


def test_calibration_test_values():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.05, 0.6])
    y = np.array([0, 1, 1, 1, 0, 1])
    result = calibration_test(p, y)
    assert result.ratio == pytest.approx(calibration(y, p)) == pytest.approx(1.65 / 4)
    assert (result.observed, result.expected, result.impressions) == (4.0, pytest.approx(1.65), 6)
    z = (abs(4 - 1.65) - 0.5) / math.sqrt((p * (1 - p)).sum())
    assert result.z == pytest.approx(z) and result.p_value == pytest.approx(2 * stats.norm.sf(z))
    low_rate, high_rate = wilson_interval(4, 6)
    assert (result.low, result.high) == pytest.approx((1.65 / (6 * high_rate), 1.65 / (6 * low_rate)))
    # within the continuity correction: p = 1
    assert calibration_test([0.5, 0.5], [1, 0]).p_value == 1.0
    assert calibration_test([0.5, 0.5, 0.5], [1, 1, 0]).p_value == 1.0


def test_calibration_test_edge_cases():
    none = calibration_test([0.01] * 100, [0] * 100)
    assert math.isnan(none.ratio) and none.high == math.inf and none.low > 0 and none.p_value > 0.05
    empty = calibration_test([], [])
    assert empty.impressions == 0 and empty.p_value == 1.0 and math.isnan(empty.ratio) and math.isnan(empty.low)
    certain = calibration_test([1.0, 0.0], [0, 1])  # no variance under H0, but Σp = 1 = Σy
    assert certain.p_value == 1.0
    wrong = calibration_test([1.0, 1.0, 0.0], [0, 0, 0])
    assert wrong.p_value == 0.0
    with pytest.raises(ValueError):
        calibration_test([0.2, 1.2], [0, 1])
    with pytest.raises(ValueError):
        calibration_test([0.2, 0.3], [0, 1, 1])


# ---------------------------------------------------------------- AUC


def brute_delong_variance(y, s):
    """DeLong's variance from its definition: the kernel over every (positive, negative) pair."""
    y = np.asarray(y) > 0
    kernel = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    return kernel.mean(), v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size


@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_delong_se_against_sklearn_and_brute_force(ties):
    rng = np.random.default_rng(5)
    y = (rng.random(250) < 0.3).astype(int)
    s = rng.normal(size=250) + 0.8 * y
    if ties:
        s = np.round(s, 1)
    result = auc_with_interval(y, s, level=0.9)
    value, variance = brute_delong_variance(y, s)
    assert result.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12) == pytest.approx(value, abs=1e-12)
    assert result.se == pytest.approx(math.sqrt(variance), rel=1e-9)
    half = stats.norm.ppf(0.95) * result.se
    assert (result.low, result.high) == pytest.approx((value - half, value + half), abs=1e-12)
    assert (result.positives, result.negatives) == (int(y.sum()), int((1 - y).sum()))


def test_auc_interval_is_clipped_and_degenerate_inputs():
    perfect = auc_with_interval([0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.8, 0.9])
    assert (perfect.auc, perfect.se, perfect.high) == (1.0, 0.0, 1.0)
    near = auc_with_interval([0, 1, 0, 1, 1, 0], [0.1, 0.2, 0.3, 0.8, 0.9, 0.15])
    assert near.high == 1.0 and near.auc + 1.96 * near.se > 1.0
    for one_class in (auc_with_interval([1, 1, 1], [0.2, 0.4, 0.5]), auc_with_interval([], [])):
        assert math.isnan(one_class.auc) and math.isnan(one_class.se) and math.isnan(one_class.low)
    single_positive = auc_with_interval([1, 0, 0, 0], [0.5, 0.1, 0.7, 0.2])  # V10 of one row adds 0
    assert single_positive.auc == pytest.approx(2 / 3) and single_positive.se == pytest.approx(
        math.sqrt(np.var([1, 0, 1], ddof=1) / 3))


def test_compare_aucs():
    a = AUCResult(0.70, 0.010, 0.68, 0.72, 100, 900)
    b = AUCResult(0.73, 0.012, 0.71, 0.75, 100, 900)
    result = compare_aucs(a, b)
    se = math.sqrt(0.010 ** 2 + 0.012 ** 2)
    assert result.delta == pytest.approx(0.03) and result.se == pytest.approx(se)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(0.03 / se), rel=1e-9)
    assert (result.low, result.high) == pytest.approx((0.03 - Z95 * se, 0.03 + Z95 * se))
    missing = compare_aucs(a, AUCResult(math.nan, math.nan, math.nan, math.nan, 0, 50))
    assert math.isnan(missing.delta) and missing.p_value == 1.0
    exact = compare_aucs(AUCResult(1.0, 0.0, 1.0, 1.0, 2, 2), AUCResult(1.0, 0.0, 1.0, 1.0, 3, 3))
    assert (exact.delta, exact.p_value) == (0.0, 1.0)


def test_aa_false_positive_rate_of_the_auc_comparison():
    """DeLong's se must match the real spread of the AUC: A/A pairs of independent samples."""
    rng = np.random.default_rng(17)
    runs, n = 1000, 300
    rejected = 0
    for _ in range(runs):
        arms = []
        for _arm in range(2):
            y = (rng.random(n) < 0.3).astype(int)
            arms.append(auc_with_interval(y, rng.normal(size=n) + 0.7 * y))
        rejected += compare_aucs(*arms).p_value < 0.05
    assert 0.03 <= rejected / runs <= 0.07, rejected / runs  # √(.05·.95/1000) ≈ 0.007


# ---------------------------------------------------------------- sample ratio mismatch


def test_srm_against_scipy_chisquare():
    counts, shares = {"control": 9420, "canary": 580}, {"control": 0.95, "canary": 0.05}
    result = sample_ratio_mismatch(counts, shares)
    chi2, p = stats.chisquare([580, 9420], [500, 9500])
    assert (result.chi2, result.p_value) == pytest.approx((chi2, p), rel=1e-12)
    assert result.mismatch and result.expected == {"canary": 500.0, "control": 9500.0}
    # shares in percent, three arms, no mismatch
    three = sample_ratio_mismatch({"a": 2010, "b": 1985, "c": 6005}, {"a": 20, "b": 20, "c": 60})
    assert three.p_value == pytest.approx(stats.chisquare([2010, 1985, 6005], [2000, 2000, 6000]).pvalue)
    assert not three.mismatch
    assert p > 1e-6 and sample_ratio_mismatch(counts, shares, threshold=1e-6).mismatch is False


def test_srm_edge_cases():
    assert sample_ratio_mismatch({"control": 10, "canary": 3}, {"control": 1.0, "canary": 0.0}).mismatch
    off = sample_ratio_mismatch({"control": 10, "canary": 0}, {"control": 1.0, "canary": 0.0})
    assert not off.mismatch and off.p_value == 1.0
    empty = sample_ratio_mismatch({"control": 0, "canary": 0}, {"control": 0.99, "canary": 0.01})
    assert math.isnan(empty.chi2) and empty.p_value == 1.0 and not empty.mismatch
    with pytest.raises(ValueError):
        sample_ratio_mismatch({"control": 10, "canary": 3}, {"control": 0.99, "treatment": 0.01})
    with pytest.raises(ValueError):
        sample_ratio_mismatch({"control": 10, "canary": 3}, {"control": 1.1, "canary": -0.1})


def test_srm_rarely_fires_under_correct_shares_and_catches_a_real_skew():
    rng = np.random.default_rng(23)
    draws = rng.multinomial(20000, [0.95, 0.05], EXPERIMENTS)
    shares = {"control": 0.95, "canary": 0.05}
    false_alarms = np.mean([sample_ratio_mismatch({"control": int(a), "canary": int(b)}, shares).mismatch
                            for a, b in draws])
    assert false_alarms <= 0.005
    skewed = rng.multinomial(20000, [0.94, 0.06], 200)  # 20% more canary impressions than configured
    caught = np.mean([sample_ratio_mismatch({"control": int(a), "canary": int(b)}, shares).mismatch for a, b in skewed])
    assert caught >= 0.95  # about 0.99 by the normal approximation


# ---------------------------------------------------------------- arm summaries and the report


def arm(rng, n, ctr_scale=1.0, cvr=0.2, with_conversions=True):
    p = rng.beta(2.0, 38.0, n)
    clicks = (rng.random(n) < np.clip(p * ctr_scale, 0, 1)).astype(int)
    conversions = np.where(clicks == 1, (rng.random(n) < cvr).astype(float), np.nan)
    return p, clicks, (conversions if with_conversions else None)


def test_arm_summary():
    rng = np.random.default_rng(29)
    p, clicks, conversions = arm(rng, 6000)
    summary = arm_summary(p, clicks, conversions, level=0.9)
    k, c = int(clicks.sum()), int(np.nansum(conversions))
    assert (summary.impressions, summary.clicks, summary.conversions) == (6000, k, c)
    assert summary.ctr == k / 6000 and (summary.ctr_low, summary.ctr_high) == wilson_interval(k, 6000, 0.9)
    assert summary.cvr == c / k and (summary.cvr_low, summary.cvr_high) == wilson_interval(c, k, 0.9)
    assert summary.calibration == calibration_test(p, clicks, 0.9)
    assert summary.auc == auc_with_interval(clicks, p, 0.9)
    no_conversions = arm_summary(p, clicks)
    assert no_conversions.conversions is None and no_conversions.cvr is None
    bad = np.where(clicks == 1, 2.0, 0.0)
    with pytest.raises(ValueError):
        arm_summary(p, clicks, bad)


def test_compare_arms_report_and_json():
    rng = np.random.default_rng(31)
    control = arm_summary(*arm(rng, 8000))
    canary = arm_summary(*arm(rng, 2000, ctr_scale=0.7))
    report = compare_arms(control, canary, margin=0.05, shares={"control": 0.8, "canary": 0.2})
    assert isinstance(report, ABReport)
    assert report.ctr == compare_proportions(control.clicks, 8000, canary.clicks, 2000, margin=0.05)
    assert report.cvr == compare_proportions(control.conversions, control.clicks, canary.conversions, canary.clicks,
                                             margin=0.05)
    assert report.auc == compare_aucs(control.auc, canary.auc)
    assert not report.srm.mismatch and report.srm.observed == {"control": 8000, "canary": 2000}
    assert report.ctr.delta < 0 and report.ctr.p_noninferior > 0.5
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ctr"]["p_two_sided"] == report.ctr.p_two_sided
    assert data["canary"]["calibration"]["ratio"] == pytest.approx(canary.calibration.ratio)
    assert data["control"]["auc"]["positives"] == control.clicks and data["margin"] == 0.05
    without = compare_arms(control, arm_summary(*arm(rng, 2000, with_conversions=False)))
    assert without.cvr is None and without.srm is None and without.to_dict()["cvr"] is None


def test_report_with_an_empty_arm_and_zero_clicks():
    rng = np.random.default_rng(37)
    control = arm_summary(*arm(rng, 3000))
    empty = arm_summary([], [], [])
    silent = arm_summary(np.full(500, 0.02), np.zeros(500), np.full(500, np.nan))  # no clicks, so no conversions
    assert math.isnan(empty.ctr) and math.isnan(empty.auc.auc) and empty.calibration.p_value == 1.0
    assert silent.clicks == 0 and silent.conversions == 0 and math.isnan(silent.cvr) and math.isnan(silent.auc.auc)
    for canary in (empty, silent):
        report = compare_arms(control, canary, margin=0.05, shares={"control": 0.95, "canary": 0.05})
        data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert report.cvr.p_two_sided == 1.0 and report.cvr.p_noninferior == 1.0 and data["cvr"]["delta"] is None
        assert report.auc.p_value == 1.0 and data["auc"]["delta"] is None
    assert compare_arms(control, empty).ctr.p_noninferior == 1.0
    assert compare_arms(control, silent).ctr.p_two_sided < 1e-6  # zero clicks out of 500 vs ~5%
