"""DeLong and the paired bootstrap, against brute force and closed forms on small inputs."""

import math

import numpy as np
import pytest

from recsmith.metrics import auc, gauc
from recsmith.metrics.significance import (ResampledAUC, ResampledGAUC, ResampledMean, bootstrap_chunks,
                                           delong, delong_components, midranks, percentile_interval)


def correlated_scores(rng, n=300, rate=0.3, shift_b=0.0, ties=False):
    y = (rng.random(n) < rate).astype(int)
    base = rng.normal(size=n) + 1.0 * y
    a = base + rng.normal(scale=0.8, size=n)
    b = base + rng.normal(scale=0.8, size=n) + shift_b * y
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


def psi(x, y):
    return (x > y) + 0.5 * (x == y)


def brute_delong(y, a, b):
    """DeLong's variance from its definition: structural components over all pairs."""
    y = y > 0
    comps = []
    for s in (a, b):
        kernel = psi(s[y][:, None], s[~y][None, :])  # [m, n]
        comps.append((kernel.mean(), kernel.mean(axis=1), kernel.mean(axis=0)))
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = comps
    m, n = v10a.size, v01a.size
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (auc_b - auc_a) / math.sqrt(var)
    return auc_a, auc_b, z


def test_midranks_average_ties():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_its_definition(ties):
    y, a, b = correlated_scores(np.random.default_rng(1), shift_b=0.3, ties=ties)
    auc_a, auc_b, z = brute_delong(y, a, b)
    result = delong(y, a, b)
    assert result.auc_a == pytest.approx(auc(y, a), abs=1e-12) == pytest.approx(auc_a, abs=1e-12)
    assert result.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


def test_delong_components_average_to_the_auc():
    y, a, _ = correlated_scores(np.random.default_rng(2), ties=True)
    value, v10, v01 = delong_components(y, a)
    assert value == pytest.approx(auc(y, a), abs=1e-12) == pytest.approx(v01.mean(), abs=1e-12)
    assert v10.size == y.sum() and v01.size == (y == 0).sum()


def test_delong_false_positive_rate_under_the_null():
    # both models are drawn from the same distribution: equal true AUCs
    rng = np.random.default_rng(20260127)
    p_values = [delong(*correlated_scores(rng, n=400)).p_value for _ in range(200)]
    assert 0.02 <= np.mean(np.array(p_values) < 0.05) <= 0.09
    assert 0.35 < np.mean(p_values) < 0.65  # roughly uniform


def test_delong_detects_a_real_difference():
    y, a, b = correlated_scores(np.random.default_rng(3), n=3000, shift_b=1.0)
    result = delong(y, a, b)
    assert result.delta > 0 and result.p_value < 1e-6


def test_delong_identical_scores():
    y, a, _ = correlated_scores(np.random.default_rng(4))
    result = delong(y, a, a)
    assert result.delta == 0 and result.p_value == 1.0


def test_bootstrap_chunks_are_reproducible_multinomial_counts():
    first = np.concatenate(list(bootstrap_chunks(50, 130, seed=7, chunk=64)))
    again = np.concatenate(list(bootstrap_chunks(50, 130, seed=7, chunk=20)))
    assert first.shape == (130, 50) and (first.sum(axis=1) == 50).all()
    assert np.array_equal(first[:20], again[:20])  # chunking does not change the draws


@pytest.mark.parametrize("ties", [False, True])
def test_resampled_auc_equals_auc_of_the_resampled_rows(ties):
    y, a, _ = correlated_scores(np.random.default_rng(5), n=120, ties=ties)
    counts = next(bootstrap_chunks(y.size, 40, seed=1))
    fast = ResampledAUC(y, a)(counts)
    for r in range(counts.shape[0]):
        rows = np.repeat(np.arange(y.size), counts[r])
        assert fast[r] == pytest.approx(auc(y[rows], a[rows]), abs=1e-12)


def test_resampled_gauc_equals_gauc_of_the_resampled_users():
    rng = np.random.default_rng(6)
    y, a, _ = correlated_scores(rng, n=400)
    users = rng.integers(0, 30, y.size)
    group_ids = np.unique(users)
    counts = next(bootstrap_chunks(group_ids.size, 25, seed=2))
    fast = ResampledGAUC(y, a, users, group_ids)(counts)
    for r in range(counts.shape[0]):
        # every row of a drawn user, once per draw (duplicating all of a user's rows leaves
        # that user's AUC unchanged and multiplies its weight)
        rows = np.concatenate([np.flatnonzero(users == g) for k, g in enumerate(group_ids)
                               for _ in range(counts[r, k])])
        assert fast[r] == pytest.approx(gauc(y[rows], a[rows], users[rows]), abs=1e-12)


def test_resampled_mean():
    values = np.arange(10.0)
    counts = next(bootstrap_chunks(10, 5, seed=3))
    for r, mean in enumerate(ResampledMean(values)(counts)):
        assert mean == pytest.approx(np.repeat(values, counts[r]).mean())


def test_percentile_interval_covers_the_truth_at_its_level():
    # the bootstrap CI of an AUC difference covers the true difference about 95% of the time
    rng = np.random.default_rng(8)
    covered = 0
    for trial in range(40):
        y, a, b = correlated_scores(rng, n=300)
        counts = np.concatenate(list(bootstrap_chunks(y.size, 300, seed=trial)))
        deltas = ResampledAUC(y, b)(counts) - ResampledAUC(y, a)(counts)
        low, high = percentile_interval(deltas)
        covered += low <= 0.0 <= high
    assert covered >= 33


def test_resampled_auc_is_nan_without_both_classes():
    counts = next(bootstrap_chunks(5, 3, seed=0))
    assert np.isnan(ResampledAUC(np.zeros(5), np.arange(5.0))(counts)).all()
    assert np.isnan(ResampledAUC(np.ones(5), np.arange(5.0))(counts)).all()


def test_comparisons_name_what_they_cannot_compute(tmp_path):
    from types import SimpleNamespace

    from recsmith.experiments.comparisons import comparison_stats
    from recsmith.run_dir import RunDir
    from recsmith.tasks import FUNNEL_TASKS
    from recsmith.train.predictions import save_predictions

    rng = np.random.default_rng(9)
    y, a, b = correlated_scores(rng, n=500)
    tasks = {t.name: t for t in FUNNEL_TASKS[:1]}
    runs = {}
    for name, scores in (("A", a), ("B", b)):
        run = RunDir(tmp_path / name).create()
        save_predictions(run.predictions, {"ctr": 1 / (1 + np.exp(-scores))}, {"click": y.astype(np.float32)},
                         {"user": rng.integers(0, 20, y.size)}, tasks, dataset="d")
        runs[name] = run
    comparison = SimpleNamespace(baseline="A", candidate="B",
                                 metrics=["auc_ctr", "gauc_ctr", "logloss_ctr", "auc_cvr", "calibration_ctr"])
    stats = comparison_stats({**runs, "C": RunDir(tmp_path / "C")}, [comparison], resamples=50)
    assert stats[("A", "B", "auc_ctr")].verdict in ("significant", "within noise")
    assert stats[("A", "B", "auc_ctr")].candidate == pytest.approx(auc(y, b), abs=1e-9)
    assert stats[("A", "B", "gauc_ctr")].p_value is None and stats[("A", "B", "logloss_ctr")].p_value is None
    assert "no interval for 'auc_cvr'" in stats[("A", "B", "auc_cvr")]
    assert "no interval for metric 'calibration_ctr'" in stats[("A", "B", "calibration_ctr")]
    missing = comparison_stats({**runs, "C": RunDir(tmp_path / "C")},
                               [SimpleNamespace(baseline="A", candidate="C", metrics=["auc_ctr"])])
    assert "no saved test predictions for C" in missing[("A", "C", "auc_ctr")]
