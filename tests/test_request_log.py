"""The request log loses nothing it answered: requests of every client share one schema,
a failing write is retried and counted, a killed service's rows are on disk, and the log
joins with click and conversion logs through `recsmith data join`."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, raw_synthetic_rows

from recsmith.data.join import run_join
from recsmith.serve import request_log as request_log_module
from recsmith.serve.app import ServeSettings, build_app
from recsmith.serve.request_log import RequestLog, logged_rows, recover
from recsmith.serve.routing import Deployment
from recsmith.serve.server import free_port, start_background
from recsmith.serve.sources import ModelSource


def dataset_of(run: Path) -> Path:
    return Path(json.loads((run / "eval.json").read_text())["dataset"])


def read_log(log_dir: Path) -> pa.Table:
    return pq.read_table(sorted(log_dir.glob("requests-*.parquet")))


@pytest.fixture(scope="module")
def rows(ranking_runs) -> list[dict]:
    return raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 50).to_pylist()


@pytest.fixture()
def logged_service(ranking_runs, tmp_path):
    log_dir = tmp_path / "requests"
    source = ModelSource()
    app = build_app(Deployment(source.load(str(ranking_runs[0]))), source, ServeSettings(log_dir=log_dir))
    server = start_background(app)
    yield server, app, log_dir
    server.stop()


def test_a_client_sending_text_for_a_number_cannot_poison_the_log(logged_service, rows):
    server, app, log_dir = logged_service
    with httpx.Client() as client:
        for request_id, user_id in (("as-number", 5), ("as-text", "5"), ("as-float", 5.0)):
            answer = client.post(f"{server.url}/predict", json={"rows": [{**rows[0], "user_id": user_id}] * 2,
                                                                "request_id": request_id})
            assert answer.status_code == 200, answer.text
    app.state.request_log.flush()
    logged = read_log(log_dir)
    assert sorted(set(logged["request_id"].to_pylist())) == ["as-float", "as-number", "as-text"]
    assert logged.num_rows == 6 and logged.schema.field("user_id").type == pa.int64()
    assert set(logged["user_id"].to_pylist()) == {5}
    with httpx.Client() as client:  # one request mixing the two: each value read as it would be alone
        mixed = [{**rows[0], "user_id": 5}, {**rows[0], "user_id": "5"}]
        assert client.post(f"{server.url}/predict", json={"rows": mixed}).status_code == 200
    assert httpx.get(f"{server.url}/health").json()["request_log"]["write_errors"] == 0


def _table(request_id: str, n: int = 3) -> pa.Table:
    features = pa.table({"x": pa.array(np.arange(n, dtype=np.float64))})
    return logged_rows(features, {"ctr": np.full(n, 0.5)}, request_id, "m@v1", time.time())


def test_a_failing_write_is_retried_and_counted_not_dropped(tmp_path, monkeypatch):
    log = RequestLog(tmp_path, fsync_seconds=3600)  # ticks only when the test calls them
    real_write, failures = os.write, {"left": 3}

    def full_disk(fd, data):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    log.append(_table("before"))
    monkeypatch.setattr(request_log_module.os, "write", full_disk)
    for i in range(3):
        log.append(_table(f"failed-{i}"))
    stats = log.stats()
    assert stats["write_errors"] == 3 and stats["rows_waiting"] == 9 and stats["rows_written"] == 3
    log.tick()  # the disk has room again: the waiting rows go to a new segment
    assert log.stats()["rows_waiting"] == 0 and log.stats()["rows_written"] == 12
    log.append(_table("after"))
    log.close()
    logged = read_log(tmp_path)
    counts = {k: v for k, v in zip(*np.unique(logged["request_id"].to_numpy(zero_copy_only=False),
                                               return_counts=True))}
    assert counts == {"before": 3, "failed-0": 3, "failed-1": 3, "failed-2": 3, "after": 3}
    assert not list(tmp_path.glob(".requests-*"))  # every segment sealed and removed


def test_rows_beyond_the_waiting_cap_are_dropped_and_counted(tmp_path, monkeypatch):
    log = RequestLog(tmp_path, fsync_seconds=3600, max_waiting_rows=5)

    def broken_disk(fd, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(request_log_module.os, "write", broken_disk)
    for i in range(3):
        log.append(_table(f"r{i}"))
    assert log.stats()["rows_waiting"] == 3 and log.stats()["rows_dropped"] == 6
    monkeypatch.undo()
    log.close()
    assert read_log(tmp_path)["request_id"].to_pylist() == ["r2"] * 3


def test_a_torn_segment_keeps_its_complete_requests(tmp_path):
    log = RequestLog(tmp_path / "live", fsync_seconds=3600)
    for i in range(4):
        log.append(_table(f"r{i}"))
    segment = next((tmp_path / "live").glob(".requests-*.arrows"))
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    # what a crash in the middle of the last write leaves: the segment, its last request torn
    (crashed / segment.name).write_bytes(segment.read_bytes()[:-10])
    log.close()
    RequestLog(crashed).close()  # opening a directory recovers what is left in it
    assert read_log(crashed)["request_id"].to_pylist() == ["r0"] * 3 + ["r1"] * 3 + ["r2"] * 3
    assert not list(crashed.glob(".requests-*"))


def test_per_request_fsync_syncs_before_append_returns(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(request_log_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log = RequestLog(tmp_path, fsync_seconds=0)
    log.append(_table("a"))
    after_first = len(synced)
    log.append(_table("b"))
    assert after_first >= 1 and len(synced) == after_first + 1
    log.close()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill -9", "SIGTERM"])
def test_a_stopped_service_loses_no_answered_request(ranking_runs, rows, tmp_path, stop):
    """A service process answers requests and is stopped. Killed with SIGKILL, every request
    it answered is in the log once the directory is recovered (as its next start does);
    stopped with SIGTERM, it has sealed them all itself."""
    log_dir, port = tmp_path / "requests", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    service = subprocess.Popen([sys.executable, "-m", "recsmith", "serve", "--model", str(ranking_runs[0]),
                                "--port", str(port), "--log-dir", str(log_dir)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url, answered = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert service.poll() is None and time.monotonic() < deadline, service.stdout.read().decode()
            time.sleep(0.1)
        with httpx.Client() as client:
            for i in range(300):
                response = client.post(f"{url}/predict", json={"rows": rows[i % 40: i % 40 + 3],
                                                               "request_id": f"k{i}"}, timeout=30)
                assert response.status_code == 200
                answered.append(f"k{i}")
    finally:
        service.send_signal(stop)
        service.wait(timeout=30)
    unsealed = list(log_dir.glob(".requests-*.arrows"))
    if stop == signal.SIGKILL:
        assert service.returncode == -signal.SIGKILL and unsealed  # the killed service sealed nothing
        recover(log_dir)
    else:
        assert service.returncode in (0, -signal.SIGTERM) and not unsealed  # uvicorn re-raises it once shut down
    logged = read_log(log_dir)
    assert set(logged["request_id"].to_pylist()) == set(answered)
    assert logged.num_rows == 3 * len(answered)


def test_the_request_log_joins_with_click_and_conversion_logs(logged_service, rows, tmp_path):
    server, app, log_dir = logged_service
    with httpx.Client() as client:
        for r in range(4):  # four requests of five candidates
            answer = client.post(f"{server.url}/predict", json={"rows": rows[5 * r: 5 * r + 5], "request_id": f"q{r}"})
            assert answer.status_code == 200
    app.state.request_log.flush()
    served = read_log(log_dir)
    served_at = {i: t for i, t in zip(served["impression_id"].to_pylist(), served["ts"].to_pylist())}
    seconds = np.timedelta64(1, "s")
    clicked = ["q0:1", "q2:4", "q3:0"]
    clicks = pa.table({"click_id": ["c1", "c2", "c3", "c4"], "impression_id": clicked + ["q9:0"],
                       "ts": [np.datetime64(served_at[i], "us") + 5 * seconds for i in clicked]
                       + [np.datetime64(served_at["q0:0"], "us")]})
    conversions = pa.table({"click_id": ["c1", "c2"],
                            "ts": [np.datetime64(served_at["q0:1"], "us") + 3600 * seconds,
                                   np.datetime64(served_at["q2:4"], "us") + 30 * 86400 * seconds]})
    pq.write_table(clicks, tmp_path / "clicks.parquet")
    pq.write_table(conversions, tmp_path / "conversions.parquet")
    definition = tmp_path / "join.yaml"
    definition.write_text(yaml.safe_dump({"impressions": str(log_dir), "clicks": "clicks.parquet",
                                          "conversions": "conversions.parquet", "output": "samples.parquet",
                                          "attribution_window": "7d"}))
    report = run_join(definition)
    assert (report.rows_out, report.attributed_clicks, report.orphan_clicks) == (20, 3, 1)
    assert (report.converted_impressions, report.late_conversions) == (1, 1)
    samples = pq.read_table(tmp_path / "samples.parquet").sort_by("impression_id")
    labels = dict(zip(samples["impression_id"].to_pylist(), samples["label_click"].to_pylist()))
    assert sorted(i for i, label in labels.items() if label) == sorted(clicked)
    converted = samples.filter(pc.equal(samples["label_convert"], 1))["impression_id"].to_pylist()
    assert converted == ["q0:1"]
    assert {"prob_ctr", "user_id", "candidate_position", "model"} <= set(samples.column_names)
