"""`recsmith monitor`: drift measures against scipy and hand-computed values, a quiet
same-distribution check, a popularity shift flagged as P1, raw-row logs encoded with the
reference's encoders, calibration compared with 1.0 behind its noise guard, model scoring
with AUC-drop levels, and clear errors."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import TINY, run_cli

from recsmith.config.schema import DataConfig, SyntheticFunnelConfig
from recsmith.metrics.ab import calibration_test
from recsmith.data.sources import resolve_dataset
from recsmith.data.synthetic import DENSE, FIELDS, FunnelWorld, SyntheticFunnel
from recsmith.errors import DataError
from recsmith.metrics import auc, gauc
from recsmith.monitor import check, drift
from recsmith.monitor.check import monitor
from recsmith.monitor.report import write_monitor_report

KNOBS = {k.removeprefix("data.synthetic."): v for k, v in TINY.items() if k.startswith("data.synthetic.")}
SHIFT = 0.5


def synthetic(zipf_shift: float = 0.0) -> Path:
    """The tiny funnel the ranking-run fixture trains on, or the same world with popularity shifted."""
    return resolve_dataset(DataConfig(synthetic=SyntheticFunnelConfig(**KNOBS, zipf_shift=zipf_shift)))


@pytest.fixture(scope="module")
def base():
    return synthetic()


@pytest.fixture(scope="module")
def shifted():
    return synthetic(SHIFT)


def raw_rows(dataset: Path, split: str = "test") -> pa.Table:
    """A split as a serving log carries it: raw ids (stored id − 1), dense values, labels, and
    the true probabilities as the logged predictions."""
    table = pq.read_table(dataset / f"{split}.parquet")
    columns = {s.name: pc.subtract(table[s.name], 1) for s in FIELDS}
    columns.update({name: table[name] for name in DENSE})
    columns.update({"click": table["click"], "conversion": table["conversion"],
                    "prob_ctr": table["true_ctr"], "prob_cvr": table["true_cvr"]})
    return pa.table(columns)


def by_name(report) -> dict:
    return {f.name: f for f in report.features}


# ------------------------------------------------------------------ measures
def test_psi_matches_a_hand_computation():
    reference, current = np.repeat([9, 3, 7], [50, 30, 20]), np.repeat([9, 3, 7], [30, 30, 40])
    bins = drift.CategoryBins.fit(reference)
    assert bins.categories.tolist() == [9, 3, 7] and bins.size == 5  # id 0, the three ids by frequency, other
    # shares (0.5, 0.3, 0.2) → (0.3, 0.3, 0.4): −0.2·ln(0.3/0.5) + 0 + 0.2·ln(0.4/0.2)
    by_hand = 0.2 * math.log(5 / 3) + 0.2 * math.log(2)
    assert by_hand == pytest.approx(0.240795, abs=1e-6)
    assert drift.psi(reference, current, bins) == pytest.approx(by_hand, abs=2e-4)  # ε-smoothing only
    assert drift.psi(reference, current, bins, epsilon=1e-9) == pytest.approx(by_hand, abs=1e-6)
    assert drift.psi(reference, reference, bins) == 0.0
    # unseen ids fall in "other", id 0 in its own bin
    assert bins.assign([0, 3, 9, 11, 7]).tolist() == [0, 2, 1, 4, 3]

    # dense: the reference's deciles; half the current in each of the lower five bins
    reference = np.arange(1000.0)
    bins = drift.QuantileBins.fit(reference)
    assert len(bins.edges) == 9 and bins.size == 11  # 10 bins + NaN
    assert np.bincount(bins.assign(reference)).tolist() == [100] * 10
    current = np.concatenate([np.arange(500.0), np.arange(500.0)])
    eps, n = drift.PSI_EPSILON, bins.size
    up, down = (0.2 + eps) / (1 + n * eps), eps / (1 + n * eps)
    ref_share = (0.1 + eps) / (1 + n * eps)
    by_hand = 5 * (up - ref_share) * math.log(up / ref_share) + 5 * (down - ref_share) * math.log(down / ref_share)
    assert drift.psi(reference, current, bins) == pytest.approx(by_hand, rel=1e-12)
    assert bins.assign([np.nan, -1e9, 1e9]).tolist() == [10, 0, 9]
    assert bins.assign(bins.edges).tolist() == list(range(9))  # a cut point closes its bin: (low, high]
    assert drift.psi_status(0.0999) == "ok" and drift.psi_status(0.1) == "moderate"
    assert drift.psi_status(0.2499) == "moderate" and drift.psi_status(0.25) == "major"


def test_ks_and_js_match_scipy():
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.2, 1.1, 2000)
    result, expected = drift.ks(a, b), ks_2samp(a, b)
    assert result.statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.pvalue == pytest.approx(expected.pvalue, rel=1e-9)
    assert drift.ks(np.r_[a, np.nan], b).statistic == pytest.approx(expected.statistic, abs=1e-12)

    ref, cur = rng.zipf(1.5, 5000) % 200, rng.zipf(1.8, 4000) % 200
    bins = drift.CategoryBins.fit(ref, top_k=20)
    p, q = drift.bin_shares(ref, bins), drift.bin_shares(cur, bins)
    distance = jensenshannon(p, q, base=2)  # scipy returns the square root of the divergence
    assert drift.js_divergence(ref, cur, bins) == pytest.approx(distance ** 2, rel=1e-9)
    assert drift.js_divergence(ref, ref, bins) == pytest.approx(0.0, abs=1e-12)
    disjoint = drift.CategoryBins.fit([1, 1, 2])
    assert drift.js_divergence([1, 1], [2, 2], disjoint) == pytest.approx(1.0)  # base 2: at most 1


def test_missing_rates_and_drop_levels():
    assert drift.missing_rate(np.array([0, 3, 0, 5]), categorical=True) == 0.5
    assert drift.missing_rate(np.array([1.0, np.nan, 2.0, 3.0]), categorical=False) == 0.25
    assert drift.raw_missing_rate(pa.chunked_array([[1.0, None, float("nan"), 2.0]])) == 0.5
    assert drift.raw_missing_rate(pa.array([1, None, 3, 4, 5])) == 0.2
    assert drift.relative_drop(0.80, 0.792) == pytest.approx(0.01)
    assert [drift.drop_level(drift.relative_drop(0.80, c)) for c in (0.8, 0.797, 0.795, 0.79, 0.81)] == \
        ["OK", "OK", "P2", "P1", "OK"]


def test_zipf_shift_changes_popularity_only():
    knobs = SyntheticFunnelConfig(**KNOBS)
    plain, moved = FunnelWorld(3, 0.5), FunnelWorld(3, 0.5, zipf_shift=SHIFT)
    for name, table in plain.user.items():
        assert np.array_equal(table, moved.user[name])
    for name, effect in plain.click_effect.items():
        assert np.array_equal(effect, moved.click_effect[name])
        assert np.array_equal(plain.cvr_effect[name], moved.cvr_effect[name])
    # the true probabilities are the unshifted world's (a pure covariate shift)
    assert vars(SyntheticFunnel(knobs, 3).calibration) == \
        vars(SyntheticFunnel(knobs.model_copy(update={"zipf_shift": SHIFT}), 3).calibration)
    draws = [w.draw_user(np.random.default_rng(1), 20_000) for w in (plain, moved)]
    assert np.bincount(draws[1]).max() > 2 * np.bincount(draws[0]).max()  # steeper: the head grows


# --------------------------------------------------------------------- checks
def test_same_distribution_stays_quiet(base, tmp_path):
    report = monitor(base, base)  # train vs test of one dataset
    assert report.level == "OK" and report.reasons == []
    assert report.rows_reference == report.rows_reference_total > 20_000
    assert max(f.psi for f in report.features) < drift.PSI_MODERATE
    features = by_name(report)
    assert features["item_price"].ks_statistic < 0.05 and features["item_price"].js_divergence is None
    assert features["user_id"].js_divergence < 0.05 and features["user_id"].ks_statistic is None
    assert features["user_id"].missing_reference == 0.0 and features["item_price"].missing_reference is None
    md, page, data = write_monitor_report(report, tmp_path / "out")
    saved = json.loads(data.read_text())
    assert saved["level"] == "OK" and len(saved["features"]) == len(FIELDS) + len(DENSE)
    assert "# Monitor report: OK" in md.read_text() and "<h1>Monitor report: OK</h1>" in page.read_text()


def test_a_popularity_shift_is_a_p1(base, shifted):
    report = monitor(base, shifted)
    features = by_name(report)
    assert report.level == "P1"
    for name in ("user_id", "item_id", "query_category", "app_version", "region"):
        assert features[name].status == "major", (name, features[name].psi)
    for name in ("hour", "weekday", "position"):  # not drawn by popularity: unmoved
        assert features[name].status == "ok", (name, features[name].psi)
    # attributes derived from the id tables move less than the ids themselves
    assert features["user_id"].psi > features["user_gender"].psi
    assert report.reasons[0].startswith("P1 ") and "major drift" in report.reasons[0]
    # a steeper Zipf empties the long tail into the head ids
    tail = features["user_id"].top_bins[0]
    assert tail["bin"] == "other ids" and tail["current_share"] < 0.5 * tail["reference_share"]


def test_a_raw_row_log_is_encoded_like_the_dataset(base, shifted, tmp_path):
    log = raw_rows(shifted)
    log_dir = tmp_path / "requests"
    log_dir.mkdir()
    half = log.num_rows // 2
    pq.write_table(log.slice(0, half), log_dir / "requests-1.parquet")
    pq.write_table(log.slice(half), log_dir / "requests-2.parquet")
    from_log, from_dataset = monitor(base, log_dir), monitor(base, shifted)
    assert from_log.rows_current == from_dataset.rows_current == log.num_rows
    for a, b in zip(from_log.features, from_dataset.features):
        assert a.name == b.name and a.psi == pytest.approx(b.psi, abs=1e-12)
    tasks = {t.task: t for t in from_log.tasks}
    assert tasks["ctr"].predictions_from == "log"
    # the logged predictions are the true probabilities, and the shift kept P(click | x): calibrated
    assert tasks["ctr"].calibration_current == pytest.approx(1.0, abs=0.08)
    assert from_log.metrics["auc_ctr"] == pytest.approx(auc(log["click"].to_numpy(), log["prob_ctr"].to_numpy()))

    # a fifth of user_city lost, one value out of range, no labels and no predictions
    city = log["user_city"].to_numpy().astype(float)
    city[: log.num_rows // 5] = np.nan
    city[-1] = 10_000  # user_city has 400 values
    broken = log.set_column(log.schema.get_field_index("user_city"), "user_city", pa.array(city, from_pandas=True))
    pq.write_table(broken.drop(["click", "conversion", "prob_ctr", "prob_cvr"]), tmp_path / "broken.parquet")
    report = monitor(base, tmp_path / "broken.parquet")
    city_drift = by_name(report)["user_city"]
    assert city_drift.missing_current == pytest.approx(0.2, abs=1e-3) and city_drift.status == "major"
    assert report.invalid_rows_current == 1 and report.tasks == [] and report.metrics == {}
    assert any("missing rate" in r for r in report.reasons)


def test_calibration_is_compared_with_one_behind_a_noise_guard(base, tmp_path, monkeypatch):
    from scipy.stats import norm

    # the guard, exactly: the same ratio 1.3 is noise on 40 rows and a P1 on 40,000
    for rows, off in ((40, False), (40_000, True)):
        labels = np.zeros(rows)
        labels[: rows // 10] = 1
        test = calibration_test(np.full(rows, 0.13), labels)
        z = (abs(rows / 10 - 0.13 * rows) - 0.5) / math.sqrt(rows * 0.13 * 0.87)  # continuity-corrected
        assert test.ratio == pytest.approx(1.3) and test.expected == pytest.approx(0.13 * rows)
        assert test.z == pytest.approx(z) and test.p_value == pytest.approx(2 * norm.sf(abs(z)))
        assert check.calibration_off(test) is off
    assert not check.calibration_off(calibration_test(np.full(40_000, 0.1), labels))  # calibrated
    assert not check.calibration_off(calibration_test(np.full(40_000, 0.108), labels))  # significant, within 10%
    none_observed = calibration_test(np.full(1000, 0.1), np.zeros(1000))
    assert check.calibration_ratio(none_observed) == math.inf and check.calibration_off(none_observed)

    log = raw_rows(base)

    def ctr_health(table: pa.Table, name: str):
        pq.write_table(table, tmp_path / f"{name}.parquet")
        report = monitor(base, tmp_path / f"{name}.parquet")
        return report, {t.task: t for t in report.tasks}["ctr"]

    report, ctr = ctr_health(log, "calibrated")
    assert ctr.status == "OK" and abs(ctr.calibration_error) < 0.1 and ctr.calibration_reference is None
    assert not any("calibration" in r for r in report.reasons)

    raised = np.minimum(1.3 * log["prob_ctr"].to_numpy().astype(np.float64), 1.0)  # still probabilities
    high = log.set_column(log.schema.get_field_index("prob_ctr"), "prob_ctr", pa.array(raised))
    report, ctr = ctr_health(high, "high")
    assert ctr.status == "P1" and report.level == "P1"
    assert ctr.calibration_current == pytest.approx(raised.sum() / float(pc.sum(log["click"]).as_py()), rel=1e-6)
    assert ctr.calibration_current > 1.25
    assert ctr.calibration_pvalue < 1e-6 and {t.task: t.status for t in report.tasks}["cvr"] == "OK"
    [reason] = [r for r in report.reasons if "calibration" in r]
    assert reason.startswith(f"P1 ctr: calibration (predicted / observed) {ctr.calibration_current:.3f}, off 1.0 by +")
    assert "z-test p = " in reason

    broken = log.set_column(log.schema.get_field_index("prob_ctr"), "prob_ctr", pc.multiply(log["prob_ctr"], 1.3))
    with pytest.raises(DataError, match=r"column prob_ctr holds \d+ value\(s\) that are no probability"):
        ctr_health(broken, "broken")

    # 25 rows of the same 1.3× predictions, as far off by chance, are not enough to tell
    report, ctr = ctr_health(high.slice(25, 25), "handful")
    assert ctr.calibration_current > 1.3 and ctr.calibration_pvalue > 0.01
    assert ctr.status == "OK" and not any("calibration" in r for r in report.reasons)

    # predictions 1.3× too high on both sides: no shift between them, still a P1 (the yardstick is 1.0)
    class HighScorer(FixedScorer):
        def predict_encoded(self, sparse, dense):
            return {"ctr": 1.3 * super().predict_encoded(sparse, dense)["ctr"]}

    monkeypatch.setattr(check, "load_scorer", lambda run_dir: HighScorer())
    report = monitor(base, base, run_dir=tmp_path)  # no eval.json: no AUC baseline
    [ctr] = report.tasks
    assert abs(ctr.calibration_shift) < 0.05 and ctr.calibration_reference > 1.25
    assert ctr.status == "P1" and report.level == "P1"


class FixedScorer:
    """A stand-in model: p_ctr from the user's click history (a real signal, deterministic)."""

    tasks = ["ctr"]

    def predict_encoded(self, sparse, dense):
        return {"ctr": 1.0 / (1.0 + np.exp(1.4 - 0.8 * dense[:, DENSE.index("user_hist_ctr")].astype(np.float64)))}


def test_auc_drop_levels_against_the_runs_test_metrics(base, tmp_path, monkeypatch):
    monkeypatch.setattr(check, "load_scorer", lambda run_dir: FixedScorer())
    test = pq.read_table(base / "test.parquet")
    p = FixedScorer().predict_encoded(None, np.stack([test[n].to_numpy() for n in DENSE], axis=1))["ctr"]
    current_auc = auc(test["click"].to_numpy(), p)
    current_gauc = gauc(test["click"].to_numpy(), p, test["user_id"].to_numpy())
    levels = {}
    for drop in (0.003, 0.008, 0.015):
        run = tmp_path / f"run{drop}"
        run.mkdir()
        baseline = {"auc_ctr": current_auc / (1 - drop), "gauc_ctr": current_gauc, "logloss_ctr": 0.3}
        (run / "eval.json").write_text(json.dumps({"test": baseline}))
        report = monitor(base, base, run_dir=run)
        drops = {d.metric: d for d in report.drops}
        assert set(drops) == {"auc_ctr", "gauc_ctr"}
        assert drops["auc_ctr"].relative_drop == pytest.approx(drop, rel=1e-9)
        assert drops["gauc_ctr"].relative_drop == pytest.approx(0.0, abs=1e-12)
        assert report.metrics["auc_ctr"] == pytest.approx(current_auc, rel=1e-12)
        levels[drop] = (drops["auc_ctr"].level, report.level)
        health = report.tasks[0]
        assert health.predictions_from == "model" and abs(health.calibration_shift) < 0.05
        assert abs(health.calibration_error) < check.CALIBRATION_ERROR_P1 and health.status == "OK"
    assert levels == {0.003: ("OK", "OK"), 0.008: ("P2", "P2"), 0.015: ("P1", "P1")}


def test_a_real_run_on_its_own_test_split_has_no_drop(ranking_runs, tmp_path):
    run = ranking_runs[0]
    dataset = Path(json.loads((run / "eval.json").read_text())["dataset"])
    result = run_cli("monitor", "--reference", dataset, "--current", dataset, "--model", run, "--out", tmp_path)
    saved = json.loads((tmp_path / "monitor.json").read_text())
    assert result.returncode == (3 if saved["level"] == "P1" else 0), result.stderr
    drops = {d["metric"]: d for d in saved["drops"]}
    assert {"auc_ctr", "gauc_ctr", "auc_cvr", "auc_ctcvr"} <= set(drops)
    for d in drops.values():  # the same rows and the same checkpoint as the run's evaluation
        assert abs(d["relative_drop"]) < 1e-5, d
    assert {t["task"]: t["predictions_from"] for t in saved["tasks"]} == {"ctr": "model", "cvr": "model"}
    # the only P1 a 40-step model earns is its calibration (it over-predicts on every split, which
    # a shift against the train split hid); no drop, no drift
    tasks = {t["task"]: t for t in saved["tasks"]}
    for reason in (r for r in saved["reasons"] if r.startswith("P1")):
        task = reason.split()[1].rstrip(":")
        assert ": calibration (predicted / observed)" in reason and tasks[task]["status"] == "P1", reason
        assert abs(tasks[task]["calibration_error"]) > 0.1 and abs(tasks[task]["calibration_shift"]) < 0.1


# ------------------------------------------------------------------------ CLI
def test_cli_exit_codes_and_files(base, shifted, tmp_path):
    result = run_cli("monitor", "--reference", base, "--current", shifted, "--out", tmp_path / "p1")
    assert result.returncode == 3, result.stderr
    assert "user_id" in result.stdout and "major" in result.stdout and "level P1" in result.stdout
    assert {p.name for p in (tmp_path / "p1").iterdir()} == {"MONITOR_REPORT.md", "monitor_report.html",
                                                             "monitor.json"}
    quiet = run_cli("monitor", "--reference", base, "--current", base, "--out", tmp_path / "ok")
    assert quiet.returncode == 0 and "no feature drifted" in quiet.stdout


@pytest.mark.parametrize("case, needle", [
    ("missing", "--reference: "),
    ("not_a_dataset", "not a prepared dataset"),
    ("log_lacks_columns", "lack the raw feature columns"),
    ("bad_split", "split 'later' is not one of"),
])
def test_bad_input_is_one_clear_error(base, tmp_path, case, needle):
    reference, current, extra = base, base, []
    if case == "missing":
        reference = tmp_path / "nowhere"
    elif case == "not_a_dataset":
        reference = tmp_path
    elif case == "log_lacks_columns":
        current = tmp_path / "log.parquet"
        pq.write_table(raw_rows(base).drop(["user_id", "item_price"]), current)
    else:
        extra = ["--current-split", "later"]
    result = run_cli("monitor", "--reference", reference, "--current", current, "--out", tmp_path / "out", *extra)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if case == "log_lacks_columns":
        assert "item_price, user_id" in result.stderr
    with pytest.raises(DataError):
        monitor(reference, current, current_split=extra[1] if extra else "test")
