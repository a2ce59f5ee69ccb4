"""recsmith.monitor.slices: per-slice monitoring of a day of served impressions against a
reference day. Synthetic impressions with seeded numpy: a feature nulled on one slot, a slice
over-predicted, a distribution moved on one slot, a concept drift for permutation importance;
rules from YAML; per-day trends and their chart."""

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from recsmith.errors import ConfigError
from recsmith.metrics.auc import auc
from recsmith.monitor import drift
from recsmith.monitor.slices import (DEFAULT_RULES, AlertRule, importance_drift, load_rules, monitor_slices,
                                     permutation_importance, plot_trends, trend)

ROWS = 40_000
SLICES = ["slot", "device_os", "ad_format"]
FEATURES = ["user_city", "item_category", "driver", "price"]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def impressions(seed: int, rows: int = ROWS, driver_effect: float = 0.15) -> dict[str, np.ndarray]:
    """Served rows: slice fields, categorical features (ids from 1), a dense price, the true
    click probability served as prob_ctr (calibrated), and clicks drawn from it."""
    rng = np.random.default_rng(seed)
    columns = {"slot": rng.integers(1, 5, rows), "device_os": rng.integers(1, 4, rows),
               "ad_format": rng.integers(1, 3, rows), "campaign": rng.integers(1, 101, rows),
               "user_city": rng.integers(1, 41, rows), "item_category": rng.integers(1, 31, rows),
               "driver": rng.integers(1, 21, rows), "price": rng.lognormal(3.0, 0.5, rows)}
    p = sigmoid(-1.8 + driver_effect * (columns["driver"] - 10) + 0.3 * (columns["slot"] == 1))
    columns["prob_ctr"] = p
    columns["click"] = (rng.random(rows) < p).astype(np.int64)
    return columns


def table(columns: dict[str, np.ndarray], null: dict[str, np.ndarray] | None = None) -> pa.Table:
    """A pyarrow table, with nulls where `null[name]` is True."""
    null = null or {}
    return pa.table({name: pa.array(values, mask=null.get(name)) for name, values in columns.items()})


@pytest.fixture(scope="module")
def reference():
    return impressions(1)


def raised(report, metric=None):
    return [a for a in report.alerts if metric is None or a.metric == metric]


# ------------------------------------------------------------------ slices
def test_a_feature_nulled_on_one_slot_is_a_p1_on_that_slot_and_feature_only(reference):
    current = impressions(2)
    broken = current["slot"] == 3
    report = monitor_slices(table(reference), table(current, {"user_city": broken}), SLICES, FEATURES, day="2024-05-02")

    [p1] = [a for a in report.alerts if a.level == "P1"]
    assert (p1.metric, p1.slice, p1.slice_field, p1.slice_value, p1.feature, p1.day) == \
        ("missing_rate_increase", "slot=3", "slot", 3, "user_city", "2024-05-02")
    assert p1.value == pytest.approx(1.0) and report.level == "P1"
    assert p1.message.startswith("P1 2024-05-02 slot=3: feature user_city: missing rate 0.0% → 100.0%")
    assert "missing_rate_increase > 0.05 → P1" in p1.message
    # the other alert is the same failure seen by PSI (the missing bin filled up): same slice, same feature
    assert {(a.slice_field, a.slice_value, a.feature) for a in report.alerts} == {("slot", 3, "user_city")}
    assert {a.metric for a in report.alerts} == {"missing_rate_increase", "psi"}

    # the failure leaks, diluted, into every device_os and all traffic: measured, explained, not raised
    for os_value in (1, 2, 3):
        leak = report.slice("device_os", os_value).features["user_city"]
        assert leak.missing_increase == pytest.approx(0.25, abs=0.02)
    assert report.slice("all").features["user_city"].missing_current == pytest.approx(broken.mean())
    assert report.slice("slot", 2).features["user_city"].missing_increase == 0.0
    suppressed = {(a.slice_field, a.slice_value) for a in report.suppressed if a.metric == "missing_rate_increase"}
    assert suppressed == {("device_os", 1), ("device_os", 2), ("device_os", 3), ("ad_format", 1), ("ad_format", 2),
                          ("all", "all")}
    whole = next(a for a in report.suppressed if a.slice_field == "all" and a.metric == "missing_rate_increase")
    assert whole.why_not_raised == "explained by the alert on slot=3"
    json.dumps(report.to_dict(), allow_nan=False)

    # without localisation every slice that crosses is raised
    plain = [r.model_copy(update={"localize": False}) for r in DEFAULT_RULES]
    everywhere = monitor_slices(table(reference), table(current, {"user_city": broken}), SLICES, FEATURES, plain)
    assert len(raised(everywhere, "missing_rate_increase")) == 1 + 3 + 2 + 1

    # the same missing values as a numpy masked array, or as encoded id 0
    masked = {**current, "user_city": np.ma.masked_array(current["user_city"], mask=broken)}
    zeros = {**current, "user_city": np.where(broken, 0, current["user_city"])}
    for same in (monitor_slices(reference, masked, SLICES, FEATURES),
                 monitor_slices(reference, zeros, SLICES, FEATURES, zero_is_missing=True)):
        assert [(a.metric, a.slice_field, a.slice_value, a.feature) for a in same.alerts] == \
            [(a.metric, a.slice_field, a.slice_value, a.feature) for a in report.alerts]
    assert not raised(monitor_slices(reference, zeros, SLICES, FEATURES), "missing_rate_increase")  # 0 is a value


def test_a_small_failing_slice_is_named_and_a_slice_made_of_its_rows_is_explained_away(reference):
    """device_os=1 (300 rows) loses user_city; nine in ten of its rows are on slot 4, which is
    otherwise empty: slot=4 crosses too, and its rest of slot does not, but outside device_os=1
    slot 4 is clean, so it is explained by device_os=1. A 5-point rise on 300 rows passes the
    noise test; the same rate on a few rows does not."""
    current = impressions(8)
    current["slot"] = np.where(current["slot"] == 4, 1, current["slot"])
    current["device_os"] = np.where(current["device_os"] == 1, 2, current["device_os"])
    chosen = np.random.default_rng(0).choice(current["slot"].size, 300, replace=False)
    current["device_os"][chosen] = 1
    current["slot"][chosen[:270]] = 4
    current["slot"][chosen[270:]] = 2
    report = monitor_slices(table(reference), table(current, {"user_city": current["device_os"] == 1}), SLICES, FEATURES)
    [p1] = raised(report, "missing_rate_increase")
    assert (p1.slice_field, p1.slice_value, p1.feature, p1.level) == ("device_os", 1, "user_city", "P1")
    slot4 = next(a for a in report.suppressed if a.slice == "slot=4" and a.metric == "missing_rate_increase")
    assert slot4.why_not_raised == "explained by the alert on device_os=1"
    assert report.slice("slot", 4).features["user_city"].missing_increase == pytest.approx(1.0)
    assert report.slice("device_os", 1).features["user_city"].missing_increase_pvalue < 1e-12

    # without the explaining away, slot=4 is raised beside it (localize off: every crossing slice)
    plain = [r.model_copy(update={"localize": False}) for r in DEFAULT_RULES if r.metric == "missing_rate_increase"]
    unexplained = monitor_slices(table(reference), table(current, {"user_city": current["device_os"] == 1}), SLICES,
                                 FEATURES, plain)
    assert {a.slice for a in unexplained.alerts} >= {"device_os=1", "slot=4"}

    # the noise test: 4 of 40 rows missing (10 points, z = 2.05) is not significant at p < 0.01
    few = DEFAULT_RULES[1].model_copy(update={"min_rows": 0})
    gone = np.arange(40) < 4
    small = (table(impressions(10, rows=40)), table(impressions(9, rows=40), {"user_city": gone}), [], FEATURES)
    quiet = monitor_slices(*small, [few])
    assert quiet.slice("all").features["user_city"].missing_increase == pytest.approx(0.10)
    assert quiet.slice("all").features["user_city"].missing_increase_pvalue == pytest.approx(0.0202, abs=1e-3)
    assert quiet.alerts == []
    assert len(monitor_slices(*small, [few.model_copy(update={"max_pvalue": None})]).alerts) == 1


def test_calibrated_data_raises_no_calibration_alert_on_any_slice(reference):
    current = table(impressions(3))
    report = monitor_slices(table(reference), current, SLICES, FEATURES)
    assert report.alerts == [] and report.level == "OK"
    assert len(report.slices) == 1 + 4 + 3 + 2
    for s in report.slices:
        ctr = s.tasks["ctr"]
        assert ctr.rows == s.rows > 5000 and abs(ctr.calibration - 1) < 0.06, (s.label, ctr.calibration)

    # 100 campaigns of ~400 rows, no row floor: a quarter are off 1.0 by more than 10% by chance;
    # the z-test (p < 0.01 per slice) lets through about one in a hundred, not a quarter
    no_floor = [AlertRule(metric="calibration", above=0.10, level="P1", min_rows=0)]
    report = monitor_slices(reference, current, ["campaign"], FEATURES, no_floor)
    off = [s for s in report.slices if abs(s.tasks["ctr"].calibration - 1) > 0.10]
    assert len(off) >= 20 and len(report.alerts) <= 2
    assert all(report.slice("campaign", a.slice_value).tasks["ctr"].calibration_pvalue < 0.01 for a in report.alerts)
    unguarded = [no_floor[0].model_copy(update={"max_pvalue": None})]
    assert len(monitor_slices(reference, current, ["campaign"], FEATURES, unguarded).alerts) >= 20


def test_predictions_one_and_a_half_times_too_high_on_one_slice_are_a_p1_there(reference):
    current = impressions(4)
    high = current["device_os"] == 2
    current["prob_ctr"] = np.where(high, 1.5 * current["prob_ctr"], current["prob_ctr"])
    report = monitor_slices(table(reference), table(current), SLICES, FEATURES, day="2024-05-03")
    [alert] = raised(report, "calibration")
    assert (alert.level, alert.slice_field, alert.slice_value, alert.task) == ("P1", "device_os", 2, "ctr")
    ratio = report.slice("device_os", 2).tasks["ctr"].calibration
    assert ratio == pytest.approx(1.5, abs=0.06) and alert.value == pytest.approx(ratio - 1)
    assert alert.message.startswith(f"P1 2024-05-03 device_os=2: task ctr: calibration (predicted / observed) {ratio:.3f}")
    assert "z-test p = " in alert.message and "[rule calibration > 0.1 → P1" in alert.message
    # all traffic and every slot are off by a sixth of that: explained by device_os=2
    assert report.slice("all").tasks["ctr"].calibration > 1.1
    assert {(a.slice_field, a.slice_value) for a in report.suppressed if a.metric == "calibration"} >= {("all", "all")}
    # a monotone rescaling within the slice leaves its AUC as it was
    rows = current["device_os"] == 2
    unscaled = auc(current["click"][rows], current["prob_ctr"][rows] / 1.5)
    assert report.slice("device_os", 2).tasks["ctr"].auc == pytest.approx(unscaled, abs=1e-12)
    assert not [a for a in report.alerts if a.metric == "auc_drop" and a.slice_field == "device_os"]


def test_psi_is_drift_psi_on_the_same_slice(reference):
    current = impressions(5)
    moved = current["slot"] == 2
    rng = np.random.default_rng(0)
    current["item_category"] = np.where(moved, rng.integers(1, 6, current["slot"].size), current["item_category"])
    current["price"] = np.where(current["slot"] == 4, current["price"] * 1.3, current["price"])
    nulled = current["slot"] == 3
    report = monitor_slices(table(reference), table(current, {"user_city": nulled}), SLICES, FEATURES)

    def by_hand(name, slot, ref_values=None, cur_values=None, dense=False):
        r = (reference[name] if ref_values is None else ref_values)[reference["slot"] == slot]
        c = (current[name] if cur_values is None else cur_values)[current["slot"] == slot]
        bins = drift.QuantileBins.fit(r) if dense else drift.CategoryBins.fit(r)
        return drift.psi(r, c, bins)

    for slot in (1, 2, 3, 4):
        stats = report.slice("slot", slot).features
        assert stats["item_category"].psi == pytest.approx(by_hand("item_category", slot), rel=1e-12, abs=1e-15)
        assert stats["price"].psi == pytest.approx(by_hand("price", slot, dense=True), rel=1e-12, abs=1e-15)
        city = by_hand("user_city", slot, cur_values=np.where(nulled, 0, current["user_city"]))  # id 0: missing
        assert stats["user_city"].psi == pytest.approx(city, rel=1e-12, abs=1e-15)
    assert report.slice("slot", 2).features["item_category"].psi > 1.0
    psi_alerts = {(a.slice_value, a.feature) for a in raised(report, "psi")}
    assert psi_alerts == {(2, "item_category"), (3, "user_city"), (4, "price")}
    assert all(a.level == "P2" for a in raised(report, "psi"))


# ------------------------------------------------------------------ importance
FEATURES_SCORED = ["driver", "user_city", "item_category"]


def score(columns) -> np.ndarray:
    """A model: driver carries the signal; user_city is used but carries none; item_category is ignored."""
    return sigmoid(-1.8 + 0.15 * (np.asarray(columns["driver"]) - 10) + 0.05 * (np.asarray(columns["user_city"]) - 20))


def test_permutation_importance_ranks_the_driving_feature_and_zeroes_an_ignored_one(reference):
    seen = []

    def scored(columns):
        seen.append(len(columns["driver"]))
        return score(columns)

    importance = permutation_importance(scored, reference, reference["click"], FEATURES_SCORED, rows=2000, seed=0)
    assert set(seen) == {2000} and len(seen) == 1 + len(FEATURES_SCORED)
    assert importance["driver"] > 0.1
    assert importance["driver"] > importance["user_city"] + 0.05
    assert importance["item_category"] == 0.0
    assert permutation_importance(score, table(reference), "click", FEATURES_SCORED, rows=2000, seed=0) == importance
    assert permutation_importance(score, reference, reference["click"], FEATURES_SCORED, seed=1) != importance


def test_importance_drift_alerts_when_the_driving_feature_collapses(reference):
    before = permutation_importance(score, reference, reference["click"], FEATURES_SCORED)
    same = permutation_importance(score, impressions(6), impressions(6)["click"], FEATURES_SCORED)
    assert importance_drift(before, same) == []
    drifted = impressions(7, driver_effect=0.0)  # clicks no longer depend on driver
    after = permutation_importance(score, drifted, drifted["click"], FEATURES_SCORED)
    assert abs(after["driver"]) < 0.03
    [alert] = importance_drift(before, after, day=4)
    assert (alert.level, alert.slice, alert.feature, alert.metric, alert.day) == ("P2", "all", "driver", "importance_change", "4")
    assert alert.message.startswith("P2 day 4 all traffic: feature driver: permutation importance (AUC drop) ")
    assert alert.value == pytest.approx(after["driver"] - before["driver"]) and alert.value < -0.1
    assert "feature driver: permutation importance" in alert.message and "importance_change > 0.05" in alert.message
    strict = [AlertRule(metric="importance_change", above=0.5, level="P1")]
    assert importance_drift(before, after, strict) == []


# ------------------------------------------------------------------ rules, trends
def test_alert_rules_load_from_yaml_and_a_bad_rule_names_its_field():
    rules = load_rules("""
rules:
  - {metric: calibration, above: 0.2, level: P2, min_rows: 500}
  - metric: psi
    above: 0.1
    level: P1
""")
    assert rules == [AlertRule(metric="calibration", above=0.2, level="P2", min_rows=500),
                     AlertRule(metric="psi", above=0.1, level="P1")]
    assert load_rules("- {metric: auc_drop, above: 0.02, level: P1}")[0].metric == "auc_drop"  # a bare list

    with pytest.raises(ConfigError) as bad:
        load_rules("rules:\n  - {metric: psi, above: 0.25, level: P2}\n  - {metric: ctr_drop, above: 0.1, level: P1}\n")
    assert "rules.1.metric" in str(bad.value) and "'ctr_drop'" in str(bad.value)
    with pytest.raises(ConfigError, match=r"rules\.0\.level: must be one of"):
        load_rules("[{metric: psi, above: 0.25, level: P3}]")
    with pytest.raises(ConfigError, match=r"rules\.0\.thresold: unknown key"):
        load_rules("[{metric: psi, thresold: 0.25, above: 0.2, level: P2}]")
    with pytest.raises(ValidationError, match="metric"):
        AlertRule(metric="latency", above=1.0, level="P2")


def test_trends_per_slice_and_metric_and_their_chart(reference, tmp_path):
    days = []
    for i, scale in enumerate((1.0, 1.0, 1.5)):
        current = impressions(10 + i, rows=20_000)
        current["prob_ctr"] = np.where(current["device_os"] == 2, scale * current["prob_ctr"], current["prob_ctr"])
        days.append(monitor_slices(reference, current, ["device_os"], FEATURES, day=f"2024-05-0{i + 1}"))
    assert [r.level for r in days] == ["OK", "OK", "P1"]
    series = trend(days)
    assert series.days == ["2024-05-01", "2024-05-02", "2024-05-03"]
    line = series.series["device_os=2"]["calibration.ctr"]
    assert line[0] == pytest.approx(1.0, abs=0.08) and line[2] == pytest.approx(1.5, abs=0.1)
    assert series.series["all"]["rows"] == [20_000.0] * 3
    assert set(series.series) == {"all", "device_os=1", "device_os=2", "device_os=3"}
    json.dumps(series.to_dict(), allow_nan=False)

    png = plot_trends(series, ["calibration.ctr", "psi.user_city"], path=tmp_path / "trend.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plot_trends(series, ["calibration.ctr"], slices=["all", "device_os=2"])
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "device_os=2" in svg
