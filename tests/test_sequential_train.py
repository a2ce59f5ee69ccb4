"""The sequential family end to end on MovieLens-100K, through the CLI as a user runs it:
a next-item model and DIN through the shared Trainer, most-popular, LightGBM, the DIN +
LightGBM hybrid and `recsmith explain` (SHAP contributions + bias = the raw score)."""

import json
import math

import numpy as np
import pytest

from conftest import run_cli
from recsmith.models.gbdt.explain import decision_path
from test_movielens import ML100K, needs_ml100k

pytestmark = [needs_ml100k, pytest.mark.slow]
BASE = "configs/base/ml100k_sequential.yaml"
QUICK = ["--set", f"data.path={ML100K}", "--set", "runtime.max_train_steps=20", "--set", "runtime.eval_every_steps=10",
         "--set", "runtime.log_every_steps=10"]


def train(run_dir, *settings):
    result = run_cli("train", BASE, "--run-dir", run_dir, *QUICK, *[a for s in settings for a in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "eval.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("seq_runs")


def test_next_item_model_reports_both_metric_families_labelled(runs):
    result = train(runs / "gru", "model.sequential.architecture=gru4rec")
    test = result["test"]
    for key in ("hr_10", "ndcg_10", "precision_20", "mrr", "auc_like", "gauc_like"):
        assert 0.0 <= test[key] <= 1.0, key
    assert test["ndcg_10"] <= test["hr_10"] and test["hr_5"] <= test["hr_10"] <= test["hr_20"]
    assert math.isnan(test["logloss_like"])  # a softmax score is no probability
    assert "full ranking" in result["protocol"]["topk"] and "not excluded" in result["protocol"]["topk"]
    assert result["test_rows"] == 943 and result["steps"] == 20
    assert (runs / "gru" / "predictions_test.npz").is_file()


def test_sampled_protocol_and_history_exclusion_are_stated_and_change_the_numbers(runs):
    full = json.loads((runs / "gru" / "eval.json").read_text())
    sampled = train(runs / "gru_sampled", "model.sequential.architecture=gru4rec", "topk.protocol=sampled",
                    "topk.exclude_history=true")
    assert "100 sampled never-rated items" in sampled["protocol"]["topk"]
    assert "excluded" in sampled["protocol"]["topk"]
    assert sampled["test"]["hr_10"] > full["test"]["hr_10"]  # 101 candidates instead of 1682


def test_most_popular_lightgbm_hybrid_and_explain(runs):
    pop = train(runs / "pop", "model.sequential.architecture=most_popular")
    assert pop["parameters"] == 0 and pop["test"]["ndcg_10"] > 0.005
    # DIN scores every (user, item) pair one by one: the sampled protocol keeps the test quick
    din = train(runs / "din", "model.sequential.architecture=din", "runtime.best_selection.primary_key=auc_like",
                "topk.protocol=sampled")
    assert 0.5 < din["test"]["auc_like"] <= 1.0 and np.isfinite(din["test"]["logloss_like"])
    hybrid = train(runs / "hybrid", "model.sequential.architecture=hybrid", f"model.sequential.hybrid_din_run={runs / 'din'}",
                   "runtime.best_selection.primary_key=auc_like", "model.sequential.lightgbm.num_boost_round=40",
                   "topk.protocol=sampled")
    gains = hybrid["feature_importance_gain"]
    assert "din_score" in gains and "din_interest_63" in gains and len(gains) == 22 + 65
    out = run_cli("explain", runs / "hybrid", "--user", "1", "--item", "50", "--top", "5")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SHAP" in out.stdout and "decision path" in out.stdout and "→" in out.stdout
    bad = run_cli("explain", runs / "hybrid", "--user", "99999", "--item", "50")
    assert bad.returncode == 2 and "user 99999 is not in the dataset" in bad.stderr


def test_shap_contributions_plus_bias_equal_the_raw_score(runs):
    import lightgbm as lgb

    from recsmith.train.fitted import explain_prediction

    for user, item in ((1, 50), (13, 1), (405, 1000)):
        why, _ = explain_prediction(runs / "hybrid", user, item)
        assert why.bias + sum(c for _, _, c in why.contributions) == pytest.approx(why.raw_score, abs=1e-9)
        assert why.probability == pytest.approx(1 / (1 + math.exp(-why.raw_score)))
    booster = lgb.Booster(model_file=str(runs / "hybrid" / "model.lgb.txt"))
    tree = booster.dump_model()["tree_info"][0]["tree_structure"]
    row = np.zeros(booster.num_feature())
    steps, leaf = decision_path(tree, row, booster.feature_name())
    assert steps and leaf == pytest.approx(booster.predict(row.reshape(1, -1), raw_score=True, num_iteration=1)[0])


def test_saved_predictions_give_the_reported_auc(runs):
    """Comparisons read predictions_test.npz: its AUC must be the one in eval.json, also for
    scores that are no probabilities (counts, softmax logits)."""
    from recsmith.metrics.auc import auc, gauc
    from recsmith.train.predictions import load_predictions

    for name in ("pop", "gru", "din"):
        test = json.loads((runs / name / "eval.json").read_text())["test"]
        preds = load_predictions(runs / name / "predictions_test.npz")
        y, p = preds.labels["like"], preds.probs["like"]
        assert auc(y, p) == pytest.approx(test["auc_like"], abs=1e-6), name
        assert gauc(y, p, preds.columns["user"]) == pytest.approx(test["gauc_like"], abs=1e-6), name
