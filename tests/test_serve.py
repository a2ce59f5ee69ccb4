"""The scoring service on loopback: parity with offline evaluation, hot swap under load,
gray release, request logging, and clear 4xx / 503 answers."""

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import raw_synthetic_rows

from recsmith.metrics.auc import auc
from recsmith.serve.app import ServeSettings, build_app
from recsmith.serve.routing import Deployment, LoadedModel
from recsmith.serve.scorer import Scorer
from recsmith.serve.server import start_background
from recsmith.serve.sources import ModelSource
from recsmith.train.predictions import load_predictions


def dataset_of(run: Path) -> Path:
    return Path(json.loads((run / "eval.json").read_text())["dataset"])


ADMIN = {"Authorization": "Bearer admin-s3cret"}


@pytest.fixture(scope="module")
def service(ranking_runs, tmp_path_factory):
    """Both runs loaded; the first one live; requests logged; the admin API on, for run dirs."""
    source = ModelSource()
    first = source.load(str(ranking_runs[0]))
    log_dir = tmp_path_factory.mktemp("request-log")
    settings = ServeSettings(max_batch=600, log_dir=log_dir, admin_token="admin-s3cret", allow_local_models=True)
    app = build_app(Deployment(first), source, settings)
    server = start_background(app)
    yield server, app, log_dir
    server.stop()


def post_rows(client, url, rows, **extra):
    return client.post(f"{url}/predict", json={"rows": rows, **extra}, timeout=30)


def test_http_scores_of_the_test_split_equal_offline_evaluation(service, ranking_runs):
    server, app, _ = service
    app.state.slot.swap(primary=ModelSource().load(str(ranking_runs[0])))
    rows = raw_synthetic_rows(dataset_of(ranking_runs[0])).to_pylist()
    served = {"ctr": [], "cvr": [], "ctcvr": []}
    with httpx.Client() as client:
        assert client.get(f"{server.url}/health").json()["status"] == "ok"
        meta = client.get(f"{server.url}/metadata").json()
        assert meta["outputs"] == ["ctr", "cvr", "ctcvr"] and "user_id" in meta["columns"]
        for start in range(0, len(rows), 500):
            response = post_rows(client, server.url, rows[start:start + 500])
            assert response.status_code == 200, response.text
            for name, values in response.json()["predictions"].items():
                served[name].extend(values)
    offline = load_predictions(ranking_runs[0] / "predictions_test.npz")
    assert len(served["ctr"]) == offline.rows == len(rows)
    for head in ("ctr", "cvr"):  # offline probabilities are stored as float32
        np.testing.assert_allclose(served[head], offline.probs[head], atol=1e-6, rtol=0)
    report = json.loads((ranking_runs[0] / "eval.json").read_text())["test"]
    assert auc(offline.labels["click"], np.array(served["ctr"])) == pytest.approx(report["auc_ctr"], abs=1e-6)
    np.testing.assert_allclose(served["ctcvr"], np.array(served["ctr"]) * np.array(served["cvr"]), rtol=1e-12)


def test_hot_swap_under_a_concurrent_request_loop_loses_no_request(service, ranking_runs):
    server, _, _ = service
    labels = [ModelSource().label(str(run)) for run in ranking_runs]
    rows = raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 20).to_pylist()
    results, failures = [], []
    stop = threading.Event()

    def client_loop(index: int) -> None:
        with httpx.Client() as client:
            for n in range(60):  # bounded: 4 clients × 60 requests
                if stop.is_set():
                    return
                try:
                    response = post_rows(client, server.url, rows[: 1 + (n % 20)], request_id=f"{index}-{n}")
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        results.append(response.json()["model"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    clients = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    with httpx.Client() as admin:
        for swap in range(6):
            time.sleep(0.05)
            target = str(ranking_runs[(swap + 1) % 2])
            response = admin.post(f"{server.url}/admin/swap", json={"model": target}, headers=ADMIN, timeout=30)
            assert response.status_code == 200 and response.json()["model"] == labels[(swap + 1) % 2]
    for thread in clients:
        thread.join(timeout=120)
    stop.set()
    assert failures == []
    assert len(results) == 240 and set(results) <= set(labels)
    with httpx.Client() as client:  # the last swap put the first run back
        assert post_rows(client, server.url, rows[:1]).json()["model"] == labels[0]


def test_gray_release_splits_traffic_by_share_and_is_sticky(ranking_runs):
    source = ModelSource()
    primary, canary = source.load(str(ranking_runs[0])), source.load(str(ranking_runs[1]))
    deployment = Deployment(primary, canary, 0.3)
    chosen = [deployment.choose(f"user-{i}").label for i in range(4000)]
    share = chosen.count(canary.label) / len(chosen)
    assert 0.27 < share < 0.33
    assert all(deployment.choose(f"user-{i}").label == chosen[i] for i in range(200))  # sticky
    assert {Deployment(primary, canary, 0.0).choose(f"u{i}").label for i in range(100)} == {primary.label}


def test_requests_are_logged_to_parquet_for_replay(service, ranking_runs):
    server, app, log_dir = service
    rows = raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 7).to_pylist()
    with httpx.Client() as client:
        answer = post_rows(client, server.url, rows, request_id="replay-me").json()
    app.state.request_log.flush()
    logged = pq.read_table(sorted(log_dir.glob("requests-*.parquet")))
    mine = logged.filter(pc.equal(logged["request_id"], "replay-me"))
    assert mine.num_rows == 7 and set(mine["model"].to_pylist()) == {answer["model"]}
    assert mine["prob_ctr"].to_pylist() == answer["predictions"]["ctr"]
    assert mine["user_id"].to_pylist() == [r["user_id"] for r in rows]
    assert mine["candidate_position"].to_pylist() == list(range(7))
    assert mine["impression_id"].to_pylist() == [f"replay-me:{p}" for p in range(7)]
    replayed = ModelSource().load(answer["model"]).scorer.predict_table(mine)  # the label is the run's path
    np.testing.assert_allclose(replayed["ctr"], answer["predictions"]["ctr"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("body, status, needle", [
    ({"rows": [{"user_id": 1}]}, 422, "lacks the field"),
    ({"rows": []}, 422, "rows"),
    ({"rows": "nope"}, 422, "rows"),
    ({"rows": [{}], "surprise": 1}, 422, "surprise"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(service, body, status, needle):
    server, _, _ = service
    with httpx.Client() as client:
        response = client.post(f"{server.url}/predict", json=body, timeout=30)
    assert response.status_code == status and needle in response.text


def test_wrong_types_oversize_batches_and_tokens(service, ranking_runs, tmp_path):
    server, _, _ = service
    row = raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 1).to_pylist()[0]
    with httpx.Client() as client:
        wrong = post_rows(client, server.url, [{**row, "item_price": "cheap"}])
        assert wrong.status_code == 422 and "item_price" in wrong.text
        out_of_range = post_rows(client, server.url, [{**row, "hour": 99}])
        assert out_of_range.status_code == 422 and "hour" in out_of_range.text
        too_many = post_rows(client, server.url, [row] * 601)
        assert too_many.status_code == 413 and "600" in too_many.text
        missing_value = post_rows(client, server.url, [{**row, "user_id": None}])
        assert missing_value.status_code == 200
    locked = build_app(Deployment(ModelSource().load(str(ranking_runs[0]))), ModelSource(),
                       ServeSettings(token="s3cret"))
    guarded = start_background(locked)
    try:
        with httpx.Client() as client:
            assert post_rows(client, guarded.url, [row]).status_code == 401
            ok = client.post(f"{guarded.url}/predict", json={"rows": [row]},
                             headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            assert client.get(f"{guarded.url}/health").status_code == 200
    finally:
        guarded.stop()


class SlowScorer:
    """A scorer that takes its time, to fill the service up."""

    def __init__(self, scorer: Scorer, seconds: float):
        self.scorer, self.seconds, self.pipeline = scorer, seconds, scorer.pipeline

    def predict_table(self, table):
        time.sleep(self.seconds)
        return self.scorer.predict_table(table)


def test_overload_is_answered_503_and_the_service_keeps_serving(ranking_runs):
    slow = LoadedModel("slow", SlowScorer(Scorer.load(ranking_runs[0]), 0.4))
    app = build_app(Deployment(slow), ModelSource(), ServeSettings(max_pending=2))
    server = start_background(app)
    row = raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 1).to_pylist()
    codes = []

    def call():
        with httpx.Client() as client:
            codes.append(post_rows(client, server.url, row).status_code)

    try:
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(set(codes)) == [200, 503] and codes.count(200) >= 2
        with httpx.Client() as client:
            assert post_rows(client, server.url, row).status_code == 200
            assert client.get(f"{server.url}/health").json()["rejected_overload"] == codes.count(503)
    finally:
        server.stop()


def test_serving_a_registry_reference_follows_promotions(ranking_runs, tmp_path):
    from recsmith.serve.model_registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    registry.add("funnel", ranking_runs[0], stage="production", reason="first")
    registry.add("funnel", ranking_runs[1])
    source = ModelSource(tmp_path / "registry")
    app = build_app(Deployment(source.load("funnel@production")), source, ServeSettings(watch_seconds=0.1),
                    primary_ref="funnel@production")
    row = raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 1).to_pylist()
    server = start_background(app)
    try:
        with httpx.Client() as client:
            assert post_rows(client, server.url, row).json()["model"] == "funnel@v1"
            registry.promote("funnel", 2, force=True, reason="test the watch")
            deadline = time.monotonic() + 20
            while client.get(f"{server.url}/health").json()["model"] != "funnel@v2":
                assert time.monotonic() < deadline, "the service did not follow the promotion"
                time.sleep(0.05)
            answer = post_rows(client, server.url, row).json()
            assert answer["model"] == "funnel@v2"
            expected = Scorer.load(registry.resolve("funnel@v2").path).predict_table(pa.Table.from_pylist(row))
            assert answer["predictions"]["ctr"] == pytest.approx(expected["ctr"].tolist(), abs=1e-12)
    finally:
        server.stop()


def test_serve_refuses_an_unknown_model_before_listening(tmp_path):
    from conftest import run_cli

    failed = run_cli("serve", "--model", "nobody@production", "--registry", tmp_path / "empty", "--port", "0")
    assert failed.returncode != 0
    assert "nobody" in failed.stdout + failed.stderr and "Traceback" not in failed.stderr
