"""The service's security audit (issue 14): admin API and tokens, what admin requests can
load, error messages, canary share, body limits, the watch and a manual swap, numbers the
model cannot take, and the Host header. Every test here failed on the service before it."""

import json
import select
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyarrow as pa
import pytest
from conftest import raw_synthetic_rows, run_cli

from recsmith.errors import ConfigError
from recsmith.features.definitions import FeatureSet
from recsmith.features.pipeline import FeaturePipeline
from recsmith.serve.app import ServeSettings, build_app
from recsmith.serve.guards import LOOPBACK_NAMES, bearer_matches, host_name
from recsmith.serve.model_registry import ModelRegistry, ReferenceRefused
from recsmith.serve.routing import Deployment
from recsmith.serve.server import allowed_hosts, make_app, start_background
from recsmith.serve.sources import ModelSource

ADMIN_TOKEN, SCORE_TOKEN = "admin-0123456789", "score-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def dataset_of(run: Path) -> Path:
    return Path(json.loads((run / "eval.json").read_text())["dataset"])


@pytest.fixture(scope="module")
def registry_root(ranking_runs, tmp_path_factory) -> Path:
    """funnel v1 (production), v2 and v3 (staging), under <tmp>/registry."""
    root = tmp_path_factory.mktemp("served") / "registry"
    registry = ModelRegistry(root)
    registry.add("funnel", ranking_runs[0], stage="production")
    registry.add("funnel", ranking_runs[1])
    registry.add("funnel", ranking_runs[0])
    return root


@pytest.fixture(scope="module")
def row(ranking_runs) -> dict:
    return raw_synthetic_rows(dataset_of(ranking_runs[0])).slice(0, 1).to_pylist()[0]


def serve(registry_root: Path, primary_ref: str = "funnel@production", **settings):
    source = ModelSource(registry_root)
    app = build_app(Deployment(source.load(primary_ref)), source, ServeSettings(**settings), primary_ref=primary_ref)
    return start_background(app)


@pytest.fixture(scope="module")
def admin_service(registry_root):
    """The admin API on, registry references only, 600 rows per request at most."""
    server = serve(registry_root, admin_token=ADMIN_TOKEN, max_batch=600)
    yield server
    server.stop()


def swap(server, model: str, headers=ADMIN) -> httpx.Response:
    return httpx.post(f"{server.url}/admin/swap", json={"model": model}, headers=headers, timeout=60)


# ------------------------------------------------------------------ the admin API
def test_the_admin_api_is_off_without_an_admin_token(registry_root):
    server = serve(registry_root, token=SCORE_TOKEN)
    try:
        scoring = {"Authorization": f"Bearer {SCORE_TOKEN}"}
        refused = swap(server, "funnel@v2", headers=scoring)
        assert refused.status_code == 403 and "--admin-token" in refused.json()["detail"]
        canary = httpx.post(f"{server.url}/admin/canary", json={"model": "funnel@v2", "share": 0.1}, headers=scoring)
        assert canary.status_code == 403
        assert httpx.get(f"{server.url}/health").json()["model"] == "funnel@v1"
    finally:
        server.stop()


def test_admin_and_scoring_tokens_are_separate(registry_root, row):
    server = serve(registry_root, token=SCORE_TOKEN, admin_token=ADMIN_TOKEN)
    scoring = {"Authorization": f"Bearer {SCORE_TOKEN}"}
    try:
        assert swap(server, "funnel@v2", headers=scoring).status_code == 401
        assert httpx.post(f"{server.url}/predict", json={"rows": [row]}, headers=ADMIN).status_code == 401
        assert httpx.post(f"{server.url}/predict", json={"rows": [row]}, headers=scoring).status_code == 200
        assert swap(server, "funnel@v2").json()["model"] == "funnel@v2"
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="must differ"):
        make_app("funnel", ServeSettings(token="same", admin_token="same"), str(registry_root))


def test_the_cli_refuses_one_token_for_both():
    done = run_cli("serve", "--model", "funnel", "--token", "same", "--admin-token", "same", timeout=120)
    assert done.returncode == 2 and "--admin-token must differ from --token" in done.stderr
    assert "Traceback" not in done.stderr


def test_bearer_tokens_match_exactly():
    assert bearer_matches("Bearer s3cret", "s3cret")
    for header in (None, "", "s3cret", "Bearer s3cre", "Bearer s3cret ", "bearer s3cret", "Bearer s3cretX"):
        assert not bearer_matches(header, "s3cret")


def test_admin_requests_name_registry_references_only(admin_service, ranking_runs, registry_root):
    local = swap(admin_service, str(ranking_runs[1]))
    assert local.status_code == 403 and "--allow-local-models" in local.json()["detail"]
    # a directory outside the root holding a registry.json: reachable before by a name with '..'
    outside = registry_root.parent / "elsewhere" / "evil"
    shutil.copytree(registry_root / "funnel", outside, ignore=shutil.ignore_patterns(".lock"))
    for ref in ("../elsewhere/evil@v1", "..", "funnel/../funnel@v1", "/funnel@v1"):
        escaped = swap(admin_service, ref)
        assert escaped.status_code in (403, 422), (ref, escaped.text)
    assert swap(admin_service, "funnel@v2").json() | {"previous": None} == {
        "previous": None, "model": "funnel@v2", "canary": None, "canary_share": 0.0, "pinned": True,
        "following": None}
    assert swap(admin_service, "funnel@v1").status_code == 200


def test_local_models_are_an_explicit_opt_in(registry_root, ranking_runs):
    server = serve(registry_root, admin_token=ADMIN_TOKEN, allow_local_models=True)
    try:
        assert swap(server, str(ranking_runs[1])).json()["model"] == str(ranking_runs[1])
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="admin API is off"):
        make_app("funnel", ServeSettings(allow_local_models=True), str(registry_root))


@pytest.mark.parametrize("how", ["registry.json path", "version symlink", "model dir symlink"])
def test_a_registry_cannot_point_outside_its_root(admin_service, registry_root, how):
    name = how.replace(" ", "-").replace(".", "-")
    outside = registry_root.parent / f"outside-{name}"
    shutil.copytree(registry_root / "funnel" / "v1", outside / "v1")
    state = json.loads((registry_root / "funnel" / "registry.json").read_text())
    state["versions"] = state["versions"][:1]
    if how == "registry.json path":
        (registry_root / name).mkdir()
        state["versions"][0]["path"] = f"../../outside-{name}/v1"
        (registry_root / name / "registry.json").write_text(json.dumps(state))
    elif how == "version symlink":
        (registry_root / name).mkdir()
        (registry_root / name / "v1").symlink_to(outside / "v1")
        (registry_root / name / "registry.json").write_text(json.dumps(state))
    else:
        (outside / "registry.json").write_text(json.dumps(state))
        (registry_root / name).symlink_to(outside)
    with pytest.raises(ReferenceRefused):
        ModelRegistry(registry_root).resolve(f"{name}@v1")
    refused = swap(admin_service, f"{name}@v1")
    assert refused.status_code == 403 and "outside" not in refused.text and str(registry_root) not in refused.text
    assert httpx.get(f"{admin_service.url}/health").json()["model"] != f"{name}@v1"


def test_admin_errors_name_no_path_and_list_no_model(admin_service, registry_root):
    for ref in ("nobody@production", "funnel@v99", "funnel@canary"):
        missing = swap(admin_service, ref)
        assert missing.status_code == 404 and missing.json()["detail"] == f"unknown model reference '{ref}'"
        assert str(registry_root) not in missing.text and "v1" not in missing.text


def test_a_canary_takes_at_most_half_the_traffic(admin_service, registry_root):
    url = f"{admin_service.url}/admin/canary"
    for share in (1.0, 0.75, 0.0, -0.1):
        too_much = httpx.post(url, json={"model": "funnel@v2", "share": share}, headers=ADMIN)
        assert too_much.status_code == 422 and "share" in too_much.text
    assert httpx.post(url, json={"model": "funnel@v2"}, headers=ADMIN).status_code == 422
    half = httpx.post(url, json={"model": "funnel@v2", "share": 0.5}, headers=ADMIN).json()
    assert half["canary"] == "funnel@v2" and half["canary_share"] == 0.5
    assert httpx.post(url, json={"model": None}, headers=ADMIN).json()["canary"] is None
    with pytest.raises(ConfigError, match="canary-share"):
        make_app("funnel", ServeSettings(), str(registry_root), canary="funnel@v2", canary_share=1.0)


# ------------------------------------------------------------------ the watch
def test_a_manual_swap_is_pinned_until_the_next_promotion(registry_root):
    server = serve(registry_root, admin_token=ADMIN_TOKEN, watch_seconds=0.05)
    try:
        assert swap(server, "funnel@v2").json()["pinned"] is True
        time.sleep(1.0)  # twenty polls of the registry, which still says v1
        health = httpx.get(f"{server.url}/health").json()
        assert (health["model"], health["pinned"], health["following"]) == ("funnel@v2", True, "funnel@production")
        ModelRegistry(registry_root).promote("funnel", 3, force=True, reason="the watch follows promotions")
        deadline = time.monotonic() + 20
        while (health := httpx.get(f"{server.url}/health").json())["model"] != "funnel@v3":
            assert time.monotonic() < deadline, "the service did not follow the promotion"
            time.sleep(0.05)
        assert health["pinned"] is False
    finally:
        server.stop()


# ------------------------------------------------------------------ body limits
def _exchange(url: str, head: bytes, chunks, wait: float = 5.0) -> tuple[int | None, int]:
    """Send `head`, then `chunks` until the server answers; (status or None, body bytes sent)."""
    parts = urlsplit(url)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        try:
            answer = sock.recv(4096)
        except (socket.timeout, ConnectionResetError):
            return None, sent
    return (int(answer.split()[1]) if answer.startswith(b"HTTP/") else None), sent


def _head(url: str, extra: str) -> bytes:
    host = urlsplit(url).netloc
    return (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(admin_service):
    started = time.perf_counter()
    status, _ = _exchange(admin_service.url, _head(admin_service.url, "Content-Length: 146000000\r\n"),
                          [b" " * 1_000_000])  # 1 MB of the 146 announced, then silence
    assert status == 413 and time.perf_counter() - started < 5
    assert httpx.get(f"{admin_service.url}/health").status_code == 200


def test_a_streamed_body_is_refused_once_it_passes_the_limit(registry_root, row):
    server = serve(registry_root, max_body_bytes=1_000_000)
    try:
        piece = b" " * 65536
        chunks = [b'{"rows": ['] + [piece] * 512 + [b"]}"]  # 32 MiB of JSON whitespace, chunked
        framed = (f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in [*chunks, b""])
        status, sent = _exchange(server.url, _head(server.url, "Transfer-Encoding: chunked\r\n"), framed)
        assert status == 413 and sent < 16 * 1_000_000
        ok = httpx.post(f"{server.url}/predict", json={"rows": [row] * 100})  # well under the limit
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/metadata").json()["max_body_bytes"] == 1_000_000
    finally:
        server.stop()


def test_the_default_body_limit_admits_max_batch_rows(admin_service, row):
    full = httpx.post(f"{admin_service.url}/predict", json={"rows": [row] * 600}, timeout=60)
    assert full.status_code == 200  # 600 rows: the row limit, not the byte limit
    assert httpx.post(f"{admin_service.url}/predict", json={"rows": [row] * 601}).status_code == 413


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("field, value, needle", [
    ("item_price", 1e308, "not a finite float32"),
    ("item_price", "inf", "not a finite float32"),
    ("user_activity", float("nan"), "not a finite float32"),
    ("user_hist_ctr", -3.5e38, "not a finite float32"),
    ("user_id", 2 ** 63, "does not fit a 64-bit integer"),
    ("item_id", -(2 ** 63) - 1, "does not fit a 64-bit integer"),
    ("hour", 2 ** 40, "out of range"),
    ("hour", 2.5, "cannot be read as an integer"),
])
def test_numbers_the_model_cannot_take_are_422_naming_row_and_field(admin_service, row, field, value, needle):
    before = httpx.get(f"{admin_service.url}/health").json()
    body = json.dumps({"rows": [row, {**row, field: value}]})  # NaN and inf as JSON allows them: literals
    answer = httpx.post(f"{admin_service.url}/predict", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert needle in detail and field in detail and "row 1" in detail
    after = httpx.get(f"{admin_service.url}/health").json()
    assert after["client_errors"] == before["client_errors"] + 1 and after["server_errors"] == 0


class BrokenScorer:
    """A scorer that fails in a way no request can cause."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def predict_table(self, table):
        raise RuntimeError("a bug")


def test_an_unexpected_failure_is_a_500_counted_as_a_server_error(ranking_runs, row):
    from recsmith.serve.routing import LoadedModel
    from recsmith.serve.scorer import Scorer

    broken = LoadedModel("broken", BrokenScorer(Scorer.load(ranking_runs[0]).pipeline))
    server = start_background(build_app(Deployment(broken), ModelSource(), ServeSettings()))
    try:
        failed = httpx.post(f"{server.url}/predict", json={"rows": [row]})
        assert failed.status_code == 500 and "a bug" not in failed.text
        health = httpx.get(f"{server.url}/health").json()
        assert (health["server_errors"], health["client_errors"], health["requests"]) == (1, 0, 0)
    finally:
        server.stop()


def test_an_encoding_that_overflows_float32_is_a_malformed_row():
    features = FeatureSet.model_validate({"features": [
        {"name": "x", "type": "numeric", "transformation": {"kind": "standardize"}}]})
    pipeline = FeaturePipeline(features, {"x": {"offset": 0.0, "scale": 1e-10}})  # 1e30 encodes to 1e40
    table = pa.table({"x": [1.0, 1e30, None, float("inf"), float("nan")]})
    bad, reasons = pipeline.invalid_rows(table)
    assert bad.tolist() == [False, True, False, False, False] and "out of range" in reasons[0]
    kept = pipeline.transform(table.filter(pa.array(~bad)))["x"]
    assert kept.tolist() == [1e10, 0.0, 0.0, 0.0]  # null, inf and NaN are missing: the fill value


# ------------------------------------------------------------------ Host header
def test_a_loopback_service_answers_loopback_host_names_only(admin_service):
    port = urlsplit(admin_service.url).port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
        refused = httpx.get(f"{admin_service.url}/health", headers={"Host": host})
        assert refused.status_code == 403 and "--allowed-host" in refused.text
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(f"{admin_service.url}/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_by_bind_address():
    assert allowed_hosts("127.0.0.1", []) == LOOPBACK_NAMES
    assert allowed_hosts("localhost", ["api.internal"]) == LOOPBACK_NAMES | {"api.internal"}
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    assert allowed_hosts("0.0.0.0", []) is None
    assert allowed_hosts("0.0.0.0", ["API.internal"]) == {"api.internal"}
    assert [host_name(h) for h in ("[::1]:80", "Example.COM.", "10.0.0.1:8000", "::1")] == \
        ["::1", "example.com", "10.0.0.1", "::1"]
