"""The sequential family end to end on MovieLens-100K, through the CLI as a user runs it:
a next-item model and DIN through the shared Trainer, most-popular, LightGBM, the DIN +
LightGBM hybrid and `recsmith explain` (SHAP contributions + bias = the raw score)."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import run_cli
from recsmith.models.gbdt.explain import decision_path
from test_movielens import ML100K, needs_ml100k

pytestmark = [needs_ml100k, pytest.mark.slow]
BASE = "configs/base/ml100k_sequential.yaml"
QUICK = ["--set", f"data.path={ML100K}", "--set", "runtime.max_train_steps=20", "--set", "runtime.eval_every_steps=10",
         "--set", "runtime.log_every_steps=10"]
ONE_NEGATIVE = ("data.options.negatives_per_positive=1",)  # the DIN and hybrid runs' dataset


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
    # DIN scores every (user, item) pair one by one: the sampled protocol keeps the test quick, and
    # the hybrid scores every train candidate row with it: a short history and one negative per
    # positive (a dataset of its own) halve that
    din = train(runs / "din", "model.sequential.architecture=din", "runtime.best_selection.primary_key=auc_like",
                "model.sequential.max_length=20", *ONE_NEGATIVE, "topk.protocol=sampled")
    assert 0.5 < din["test"]["auc_like"] <= 1.0 and np.isfinite(din["test"]["logloss_like"])
    hybrid = train(runs / "hybrid", "model.sequential.architecture=hybrid", f"model.sequential.hybrid_din_run={runs / 'din'}",
                   "runtime.best_selection.primary_key=auc_like", "model.sequential.lightgbm.num_boost_round=40",
                   *ONE_NEGATIVE, "topk.protocol=sampled")
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


@pytest.fixture(scope="module")
def online_store(runs):
    """The runs' dataset in an embedded online store (the Redis backend is checked on the same
    records in test_online_store.py)."""
    from recsmith.online.materialize import dataset_of_run, materialize
    from recsmith.online.store import open_store

    store = open_store(f"sqlite:///{runs / 'store.db'}")
    materialize(dataset_of_run(runs / "gru"), store)
    yield store
    store.close()


def test_served_recommendations_and_scores_equal_offline_evaluation(runs, online_store):
    """From the store, as of each test event's time: GRU4Rec's scores of every item and its
    top 10 equal the offline TorchScorer's on the dataset's log; DIN's and the hybrid's
    candidate scores equal the test predictions the runs saved (to 1e-5)."""
    from recsmith.config.loader import load_experiment
    from recsmith.data.sequence_dataset import SequenceDataset
    from recsmith.online.materialize import dataset_of_run
    from recsmith.online.scoring import SequenceService
    from recsmith.run_dir import RunDir
    from recsmith.train.evaluate_sequential import TorchScorer
    from recsmith.train.fitted import PopularityScorer, load_sequential_model
    from recsmith.train.predictions import load_predictions

    dataset = SequenceDataset.load(dataset_of_run(runs / "gru"))
    log, raw = dataset.log, dataset.raw_ids()
    events = log.targets("test")[:40]
    cfg = load_experiment(RunDir(runs / "gru").config)
    model = load_sequential_model(RunDir(runs / "gru"), cfg, log.num_items)
    offline = TorchScorer(model, log, events, cfg.model.sequential.max_length, "softmax",
                          torch.device("cpu")).score(events, None).double().numpy()
    gru = SequenceService(runs / "gru", online_store)
    for event, expected in zip(events, offline):
        answer = gru.recommend(raw["user_id"][log.user[event]], int(log.ts[event]), 10)
        items, scores = answer.items, answer.scores
        top = np.argsort(-expected, kind="stable")[:10] + 1
        assert items == [raw["item_id"][i] for i in top]
        np.testing.assert_allclose(scores, expected[top - 1], atol=1e-5)

    popular = PopularityScorer(dataset).score(events[:5], None).numpy()  # most-popular: counts before t
    pop = SequenceService(runs / "pop", online_store)
    for event, expected in zip(events[:5], popular):
        answer = pop.recommend(raw["user_id"][log.user[event]], int(log.ts[event]), 10)
        items, scores = answer.items, answer.scores
        assert scores.tolist() == sorted(expected, reverse=True)[:10]
        assert scores.tolist() == [expected[pop.codes[str(i)] - 1] for i in items]

    rows = SequenceDataset.load(dataset_of_run(runs / "din")).candidates("test", ["event", "item_id"])  # same log
    chosen = np.isin(rows["event"], events)
    for name in ("din", "hybrid"):
        service = SequenceService(runs / name, online_store)
        saved = load_predictions(runs / name / "predictions_test.npz").probs["like"][chosen]
        served = []
        for event in events:
            items = [raw["item_id"][i] for i in rows["item_id"][rows["event"] == event]]
            served.append(service.predict(raw["user_id"][log.user[event]], int(log.ts[event]), items).scores)
        np.testing.assert_allclose(1 / (1 + np.exp(-np.concatenate(served))), saved, atol=1e-5, err_msg=name)


def test_onnx_export_and_batch_predict_give_the_offline_scores(runs, online_store, tmp_path):
    """`recsmith export --format onnx` of GRU4Rec and DIN (parity with PyTorch checked by the
    export): ONNX Runtime on the exported inputs gives the offline evaluation's scores; and
    `recsmith predict RUN --store` answers request rows like the service (DIN: its saved test
    predictions, to 1e-5)."""
    import onnxruntime
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsmith.data.sequence_dataset import SequenceDataset
    from recsmith.families.sequential.export import SequenceExport
    from recsmith.online.batch import StoreScorer
    from recsmith.online.materialize import dataset_of_run
    from recsmith.online.scoring import SequenceService
    from recsmith.run_dir import RunDir
    from recsmith.serve.batch import predict_file
    from recsmith.serve.export import export_run
    from recsmith.train.predictions import load_predictions

    dataset_dir = dataset_of_run(runs / "din")
    saved = load_predictions(runs / "din" / "predictions_test.npz").probs["like"]
    result = run_cli("export", runs / "din", "--format", "onnx", "--out", tmp_path / "din")
    assert result.returncode == 0, result.stderr[-2000:]
    export_run(runs / "gru", "onnx", tmp_path / "gru", parity_rows=100)  # in process: the suite's time
    for name in ("gru", "din"):
        report = json.loads((tmp_path / name / "export.json").read_text())
        assert max(report["max_abs_diff"].values()) <= 1e-5
        session = onnxruntime.InferenceSession(str(tmp_path / name / "model.onnx"))
        inputs = SequenceExport(RunDir(runs / name), dataset_dir).export_inputs(dataset_dir, None)
        exported = session.run(None, dict(zip(report["inputs"], inputs)))[0]
        if name == "din":
            np.testing.assert_allclose(1 / (1 + np.exp(-exported)), saved, atol=1e-5)
        else:
            top = SequenceService(runs / "gru", online_store)
            dataset = SequenceDataset.load(dataset_dir)
            log, raw = dataset.log, dataset.raw_ids()
            event = log.targets("test")[0]
            answer = top.recommend(raw["user_id"][log.user[event]], int(log.ts[event]), 5)
            np.testing.assert_allclose(np.sort(exported[0])[::-1][:5], answer.scores, atol=1e-5)

    dataset = SequenceDataset.load(dataset_dir)
    log, raw = dataset.log, dataset.raw_ids()
    rows = dataset.candidates("test", ["event", "item_id"])
    first = rows["event"] < np.sort(np.unique(rows["event"]))[30]  # 30 requests' candidates
    requests = pa.table({"user": [str(raw["user_id"][log.user[e]]) for e in rows["event"][first]],
                         "item": [str(raw["item_id"][i]) for i in rows["item_id"][first]],
                         "at": log.ts[rows["event"][first]].astype(np.int64)})
    pq.write_table(requests, tmp_path / "requests.parquet")
    predict_file(StoreScorer(SequenceService(runs / "din", online_store)), tmp_path / "requests.parquet",
                 tmp_path / "scored.parquet")  # `recsmith predict RUN --store URI` (in process: the suite's time)
    scored = pq.read_table(tmp_path / "scored.parquet")
    assert scored.column_names == ["user", "item", "at", "score"]
    np.testing.assert_allclose(1 / (1 + np.exp(-scored["score"].to_numpy())), saved[first], atol=1e-5)


def test_served_requests_name_what_is_wrong(runs, online_store):
    from recsmith.errors import ConfigError, DataError
    from recsmith.online.features import OnlineFeatures
    from recsmith.online.scoring import SequenceService

    gru, hybrid = SequenceService(runs / "gru", online_store), SequenceService(runs / "hybrid", online_store)
    with pytest.raises(DataError, match="user 'nobody' is not in the online store"):
        gru.recommend("nobody", 10**9, 5)
    with pytest.raises(DataError, match=r"item\(s\) \['no-such-item'\] are not in the catalogue"):
        hybrid.predict(1, 10**9, [50, "no-such-item"])
    with pytest.raises(ConfigError, match="scores given candidates"):
        hybrid.recommend(1, 10**9, 5)
    pop = SequenceService(runs / "pop", online_store)  # needs no history: a new user gets the popular items
    assert pop.recommend("nobody", 10**9, 5).items == pop.recommend(1, 10**9, 5).items
    ranked = gru.recommend(1, 10**10, 1682, exclude_seen=True).items  # every item: the seen ones last
    history = set(OnlineFeatures(online_store).user(1).arrays["item"].tolist())
    assert len(ranked) == 1682 and not {gru.codes[str(i)] for i in ranked[:1682 - len(history)]} & history


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_service_recommends_scores_and_takes_events_over_http(runs, tmp_path, backend):
    """`recsmith serve --model RUN --store URI` as a user calls it: /recommend and /predict equal
    the in-process answers (themselves equal to the offline evaluation, above), an event is
    applied once and changes the next recommendation, events need their own token."""
    import time
    from dataclasses import replace

    import httpx
    import lightgbm as lgb
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from conftest import redis_url
    from recsmith.online.materialize import dataset_of_run, materialize
    from recsmith.online.scoring import SequenceService
    from recsmith.online.store import open_store
    from recsmith.serve.app import ServeSettings
    from recsmith.serve.server import make_online_app, start_background

    uri = f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite" else f"{redis_url()}?prefix=http{tmp_path.name}"
    store = open_store(uri)
    materialize(dataset_of_run(runs / "gru"), store)
    settings = ServeSettings(token="score")
    gru = start_background(make_online_app(str(runs / "gru"), uri, settings, events_token="events"))
    hybrid_app = make_online_app(str(runs / "hybrid"), uri, replace(settings, log_dir=tmp_path / "log"))
    hybrid = start_background(hybrid_app)
    scoring, eventing = {"Authorization": "Bearer score"}, {"Authorization": "Bearer events"}
    try:
        with httpx.Client(timeout=30) as client:
            ask = {"user": 1, "k": 10, "exclude_seen": True, "at": 10**10}
            before = client.post(f"{gru.url}/recommend", json=ask, headers=scoring).json()
            expected = SequenceService(runs / "gru", store).recommend(1, 10**10, 10, exclude_seen=True)
            assert before["items"] == expected.items
            np.testing.assert_allclose(before["scores"], expected.scores, atol=1e-5)
            candidates = [50, 181, 1, 1682]
            scored = client.post(f"{hybrid.url}/predict", json={"user": 1, "candidates": candidates, "at": 10**10,
                                                                "request_id": "r1"}, headers=scoring).json()
            np.testing.assert_allclose(scored["scores"], SequenceService(runs / "hybrid", store).predict(
                1, 10**10, candidates).scores, atol=1e-5)
            why = client.post(f"{hybrid.url}/predict", json={"user": 1, "candidates": candidates, "at": 10**10,
                                                            "explain": True, "reasons": 500}, headers=scoring).json()
            np.testing.assert_allclose(why["scores"], scored["scores"], atol=1e-6)
            for score, reasons in zip(why["scores"], why["reasons"]):  # every feature: SHAP + bias = the score
                assert len(reasons) == 87 and abs(sum(r["contribution"] for r in reasons) + why["bias"] - score) < 1e-6
                sizes = [abs(r["contribution"]) for r in reasons]
                assert sizes == sorted(sizes, reverse=True)
            top3 = client.post(f"{hybrid.url}/predict", json={"user": 1, "candidates": candidates, "at": 10**10,
                                                             "explain": True}, headers=scoring).json()
            assert [r[:3] for r in why["reasons"]] == top3["reasons"]
            no_reasons = client.post(f"{gru.url}/predict", json={"user": 1, "candidates": [50], "explain": True},
                                     headers=scoring)
            assert no_reasons.status_code == 422 and "reasons come from LightGBM" in no_reasons.json()["detail"]
            event = {"id": "ev-1", "user": 1, "item": before["items"][0], "ts": 10**10 - 60, "rating": 5}
            assert client.post(f"{gru.url}/events", json=event, headers=scoring).status_code == 401
            assert client.post(f"{gru.url}/events", json=event, headers=eventing).json() == {"id": "ev-1",
                                                                                           "applied": True}
            assert client.post(f"{gru.url}/events", json=event, headers=eventing).json()["applied"] is False
            after = client.post(f"{gru.url}/recommend", json=ask, headers=scoring).json()
            assert before["items"][0] not in after["items"] and after["scores"] != before["scores"]
            now = {"user": 2, "k": 3, "exclude_seen": True}  # no `at`: now, with this second's events
            top = client.post(f"{gru.url}/recommend", json=now, headers=scoring).json()["items"][0]
            posted = {"id": "ev-now", "user": 2, "item": top, "ts": int(time.time()), "rating": 4}
            assert client.post(f"{gru.url}/events", json=posted, headers=eventing).json()["applied"] is True
            assert top not in client.post(f"{gru.url}/recommend", json=now, headers=scoring).json()["items"]
            assert client.post(f"{hybrid.url}/events", json=event, headers=eventing).status_code == 403
            unknown = client.post(f"{gru.url}/recommend", json={**ask, "user": "nobody"}, headers=scoring)
            assert unknown.status_code == 422 and "user 'nobody' is not in the online store" in unknown.json()["detail"]
            wrong = client.post(f"{hybrid.url}/recommend", json=ask, headers=scoring)
            assert wrong.status_code == 422 and "scores given candidates" in wrong.json()["detail"]
            assert client.post(f"{gru.url}/recommend", json=ask).status_code == 401
            hybrid_app.state.request_log.flush()  # the features served, logged: they give the served scores
            logged = pq.read_table(sorted((tmp_path / "log").glob("requests-*.parquet")))
            mine = logged.filter(pc.equal(logged["request_id"], "r1"))
            assert mine["item"].to_pylist() == [str(c) for c in candidates] and set(mine["at"].to_pylist()) == {10**10}
            np.testing.assert_array_equal(mine["score"].to_numpy(), scored["scores"])
            booster = lgb.Booster(model_file=str(runs / "hybrid" / "model.lgb.txt"))
            matrix = np.stack([mine[name].to_numpy() for name in booster.feature_name()], axis=1)
            np.testing.assert_allclose(booster.predict(matrix, raw_score=True), scored["scores"], rtol=0, atol=1e-9)
            assert len(mine["history"][0]) > 0
            health = client.get(f"{gru.url}/health").json()
            assert health["events"] == 2 and health["duplicate_events"] == 1 and health["answers"] == "POST /recommend"
    finally:
        gru.stop()
        hybrid.stop()
        store.close()
