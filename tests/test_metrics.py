"""Metric functions against scikit-learn and brute force, ties included."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from recsmith.metrics import auc, calibration, gauc, logloss
from recsmith.metrics.funnel import funnel_metrics, metric_names
from recsmith.tasks import FUNNEL_TASKS

TASKS = {t.name: t for t in FUNNEL_TASKS}


def brute_force_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_and_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # coarse scores: many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)


def test_auc_all_tied_is_half_and_one_class_is_nan():
    assert auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert np.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0


def brute_force_gauc(y, s, g):
    total, weight = 0.0, 0
    for user in np.unique(g):
        m = g == user
        if 0 < y[m].sum() < m.sum():
            total += m.sum() * roc_auc_score(y[m], s[m])
            weight += m.sum()
    return total / weight


@pytest.mark.parametrize("seed", range(5))
def test_gauc_is_impression_weighted_per_user_auc(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    g = rng.integers(0, 60, n)
    y = (rng.random(n) < 0.2 + 0.01 * (g % 20)).astype(int)
    s = np.round(rng.random(n) + 0.2 * y, 2)
    assert gauc(y, s, g) == pytest.approx(brute_force_gauc(y, s, g), abs=1e-12)


def test_gauc_skips_single_class_users_and_is_nan_without_any():
    y = np.array([1, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.5, 0.4])
    g = np.array([0, 0, 1, 1, 2, 2])  # only user 0 has both classes
    assert gauc(y, s, g) == 1.0
    assert np.isnan(gauc([1, 0], [0.2, 0.3], [0, 1]))


def test_logloss_and_calibration():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.random(500), 0.01, 0.99)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    assert calibration([0, 1, 1, 0], [0.25, 0.75, 0.5, 0.5]) == pytest.approx(1.0)
    assert calibration([0, 0, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2.0)
    assert np.isnan(calibration([0, 0], [0.1, 0.2]))


def test_funnel_metrics_use_the_right_rows():
    rng = np.random.default_rng(1)
    n = 4000
    click = (rng.random(n) < 0.3).astype(float)
    conversion = click * (rng.random(n) < 0.4)
    p_ctr, p_cvr = rng.random(n), rng.random(n)
    user = rng.integers(0, 50, n)
    truth = {"true_ctr": rng.random(n), "true_cvr": rng.random(n),
             "conversion_if_clicked": (rng.random(n) < 0.3).astype(float), "user": user}
    out = funnel_metrics({"ctr": p_ctr, "cvr": p_cvr}, {"click": click, "conversion": conversion}, truth, TASKS)
    clicked = click > 0
    assert out["auc_ctr"] == pytest.approx(roc_auc_score(click, p_ctr))
    assert out["auc_cvr"] == pytest.approx(roc_auc_score(conversion[clicked], p_cvr[clicked]))
    assert out["auc_cvr_masked"] == out["auc_cvr"]
    assert out["auc_ctcvr"] == pytest.approx(roc_auc_score(conversion, p_ctr * p_cvr))
    assert out["auc_cvr_entire"] == pytest.approx(roc_auc_score(truth["conversion_if_clicked"], p_cvr))
    assert out["gauc_cvr"] == pytest.approx(brute_force_gauc(conversion[clicked], p_cvr[clicked], user[clicked]))
    assert set(out) == set(metric_names(["ctr", "cvr"], synthetic=True, tasks=TASKS))
    only_ctr = funnel_metrics({"ctr": p_ctr}, {"click": click, "conversion": conversion}, truth, TASKS)
    assert set(only_ctr) == set(metric_names(["ctr"], synthetic=True, tasks=TASKS))
    # before the dataset's roles are known (a config on its own), every head may be the second task
    assert set(out) < set(metric_names(["ctr", "cvr"], synthetic=True)) and "auc_ctr_masked" in \
        metric_names(["ctr", "cvr"], synthetic=True)


@pytest.mark.parametrize("seed", range(3))
def test_gauc_fast_path_equals_brute_force(seed):
    # float32 scores (what models output), some negative, with ties: the packed-key sort
    rng = np.random.default_rng(seed)
    n = 3000
    g = rng.integers(0, 80, n)
    y = (rng.random(n) < 0.3).astype(int)
    s = (np.round(rng.normal(size=n) + 0.5 * y, 1)).astype(np.float32)
    assert gauc(y, s, g) == pytest.approx(brute_force_gauc(y, s, g), abs=1e-12)
    # groups out of the packed range take the exact fallback and agree
    assert gauc(y, s, g + 2**40) == pytest.approx(gauc(y, s, g), abs=1e-12)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
