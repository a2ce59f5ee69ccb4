"""Micro-batching (serve/batching.py): concurrent requests share model calls, and each gets
exactly its own rows' answer or its own error."""

import asyncio
import threading

import httpx
import numpy as np
import pyarrow as pa
import pytest

from recsmith.errors import DataError
from recsmith.serve.batching import MicroBatcher


class RecordingScorer:
    """Scores a table's `x` column (2x, and x + 1) and records each call's rows; a negative x
    is a malformed row, the way a real scorer refuses one."""

    def __init__(self, seconds: float = 0.0):
        self.calls: list[int] = []
        self.seconds = seconds

    def predict_table(self, table: pa.Table) -> dict:
        x = table["x"].to_numpy()
        if (x < 0).any():
            raise DataError(f"row {int(np.argmax(x < 0))}: x is negative")
        self.calls.append(table.num_rows)
        if self.seconds:
            threading.Event().wait(self.seconds)
        return {"double": 2.0 * x, "next": x + 1.0}


def submit_all(batcher: MicroBatcher, scorer, tables: list[pa.Table]) -> list:
    async def main():
        return await asyncio.gather(*(batcher.score(scorer, t) for t in tables), return_exceptions=True)

    return asyncio.run(main())


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    scorer = RecordingScorer(seconds=0.05)
    batcher = MicroBatcher(max_wait_s=0.02)
    tables = [pa.table({"x": np.arange(n, dtype=np.float64) + 100 * n}) for n in (3, 1, 5, 2, 4)]
    try:
        answers = submit_all(batcher, scorer, tables)
    finally:
        batcher.close()
    for table, answer in zip(tables, answers):
        x = table["x"].to_numpy()
        np.testing.assert_array_equal(answer["double"], 2 * x)
        np.testing.assert_array_equal(answer["next"], x + 1)
    assert sum(scorer.calls) == 15 and len(scorer.calls) < len(tables)  # batched: fewer calls than requests
    assert batcher.requests == 5 and batcher.batches == len(scorer.calls)


def test_one_malformed_request_fails_alone_with_its_own_row_numbers():
    scorer = RecordingScorer()
    batcher = MicroBatcher(max_wait_s=0.05)
    good = [pa.table({"x": [1.0, 2.0]}), pa.table({"x": [3.0]})]
    bad = pa.table({"x": [4.0, 5.0, -1.0]})
    try:
        first, broken, second = submit_all(batcher, scorer, [good[0], bad, good[1]])
    finally:
        batcher.close()
    assert isinstance(broken, DataError) and "row 2:" in str(broken)  # its own row, not the batch's 4
    np.testing.assert_array_equal(first["double"], [2.0, 4.0])
    np.testing.assert_array_equal(second["next"], [4.0])


def test_requests_for_different_models_are_never_mixed():
    one, two = RecordingScorer(), RecordingScorer()
    batcher = MicroBatcher(max_wait_s=0.05)
    tables = [pa.table({"x": [float(i)]}) for i in range(4)]

    async def main():
        return await asyncio.gather(*(batcher.score(one if i % 2 else two, t) for i, t in enumerate(tables)))

    try:
        answers = asyncio.run(main())
    finally:
        batcher.close()
    assert [a["double"].tolist() for a in answers] == [[0.0], [2.0], [4.0], [6.0]]
    assert sum(one.calls) == 2 and sum(two.calls) == 2


@pytest.fixture(scope="module")
def funnel_service(ranking_runs):
    from recsmith.serve.app import ServeSettings, build_app
    from recsmith.serve.routing import Deployment
    from recsmith.serve.server import start_background
    from recsmith.serve.sources import ModelSource

    source = ModelSource()
    server = start_background(build_app(Deployment(source.load(str(ranking_runs[0]))), source,
                                        ServeSettings(batch_wait_ms=5)))
    yield server
    server.stop()


def test_columns_score_like_rows_and_concurrent_clients_like_one(funnel_service, ranking_runs):
    from conftest import raw_synthetic_rows
    from test_serve import dataset_of

    rows = raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 60).to_pylist()
    url = f"{funnel_service.url}/predict"
    with httpx.Client() as client:
        alone = client.post(url, json={"rows": rows}).json()["predictions"]
        columns = client.post(url, json={"columns": {k: [r[k] for r in rows] for k in rows[0]}}).json()
    assert columns["predictions"] == alone
    answers: dict[int, dict] = {}

    def one_client(index: int) -> None:  # six clients, ten rows each, at once
        with httpx.Client() as client:
            answers[index] = client.post(url, json={"rows": rows[10 * index:10 * index + 10]}).json()["predictions"]

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for name, values in alone.items():
        together = [v for i in range(6) for v in answers[i][name]]
        np.testing.assert_allclose(together, values, rtol=0, atol=1e-6)  # float32 model: batch shape may round


@pytest.mark.parametrize("body, needle", [
    ({"rows": [{"x": 1}], "columns": {"x": [1]}}, "one of the two"),
    ({}, "one of the two"),
    ({"columns": {"user_id": [1, 2], "user_age": [3, 4], "hour": [5]}}, "'hour' has 1"),
    ({"columns": {"user_id": [1]}}, "the columns lack the field"),
])
def test_bad_column_requests_are_a_422_naming_the_problem(funnel_service, body, needle):
    with httpx.Client() as client:
        response = client.post(f"{funnel_service.url}/predict", json=body)
    assert response.status_code == 422 and needle in response.text
