"""A corpus of bad inputs: configs, raw data rows, dataset specs, join definitions, CLI
arguments and HTTP requests. Each one must end in a non-zero exit (2: the user's input) or a
4xx, with one clear line naming the culprit, no traceback, and nothing half-written: the
output it would have written does not exist, and what was there before is unchanged.

CLI cases run `recsmith.cli.main` in this process (the function the `recsmith` script
calls), so the corpus costs seconds, not a Python start-up per case."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from conftest import BASE_CONFIG, REPO, TINY

E3 = REPO / "configs" / "experiments" / "mtl_funnel" / "E3_deepfm_mmoe_esmm.yaml"
E0A = REPO / "configs" / "experiments" / "mtl_funnel" / "E0a_deepfm_st_ctr.yaml"
QUICK_CHAIN = REPO / "configs" / "chains" / "mtl_funnel.yaml"


def run_main(args: list, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `recsmith ARGS`, run in this process."""
    from recsmith.cli import main

    saved = sys.argv
    sys.argv = ["recsmith", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return code, out, err


@dataclass
class Case:
    """`setup(tmp_path)` writes the inputs and returns the CLI arguments; `expected` must be
    in the one line on stderr; `untouched(tmp_path)` lists paths that must not change
    (None: must not exist afterwards)."""

    id: str
    setup: Callable[[Path], list]
    expected: str
    untouched: Callable[[Path], dict] = field(default=lambda tmp: {})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_file(tmp: Path, data: dict, name: str = "exp.yaml") -> Path:
    return write(tmp / name, yaml.safe_dump(data))


def tiny_sets() -> list[str]:
    return [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def train(tmp: Path, config: Path | str, *extra) -> list:
    return ["train", config, "--run-dir", tmp / "run", *extra]


def extends_cycle(tmp: Path) -> Path:
    config_file(tmp, {"extends": "a.yaml"}, "b.yaml")
    return config_file(tmp, {"extends": "b.yaml"}, "a.yaml")


NO_RUN = lambda tmp: {tmp / "run": None}  # noqa: E731  (the run dir must not be created)


# ------------------------------------------------------------------ configs
CONFIG_CASES = [
    Case("yaml-syntax", lambda t: train(t, write(t / "exp.yaml", "name: x\ndata: {batch_size: 12\n")),
         "exp.yaml", NO_RUN),
    Case("not-a-mapping", lambda t: train(t, write(t / "exp.yaml", "- just\n- a list\n")), "exp.yaml", NO_RUN),
    Case("unknown-top-level-key", lambda t: train(t, config_file(t, {"extends": str(BASE_CONFIG), "optimiser": {}})),
         "optimiser: unknown key (did you mean 'optim'?)", NO_RUN),
    Case("extends-missing", lambda t: train(t, config_file(t, {"extends": "nowhere.yaml"})), "nowhere.yaml", NO_RUN),
    Case("extends-cycle", lambda t: train(t, extends_cycle(t)), "extends", NO_RUN),
    Case("negative-learning-rate", lambda t: train(t, E3, "--set", "optim.dense.lr=-0.1"), "optim.dense.lr", NO_RUN),
    Case("amp-unknown-precision", lambda t: train(t, E3, "--set", "runtime.amp=fp8"),
         "runtime.amp: expected true or false; or must be one of 'auto', 'bf16' or 'fp16', got 'fp8'", NO_RUN),
    Case("zero-epochs", lambda t: train(t, E3, "--set", "runtime.max_train_epochs=0"), "runtime.max_train_epochs",
         NO_RUN),
    Case("set-without-equals", lambda t: train(t, E3, "--set", "data.batch_size"),
         "--set expects dotted.key=value", NO_RUN),
    Case("set-unreadable-yaml", lambda t: train(t, E3, "--set", "model.deep_hidden_dims=[256,"),
         "model.deep_hidden_dims", NO_RUN),
    Case("primary-key-of-a-missing-head", lambda t: train(t, E0A, "--set", "runtime.best_selection.primary_key=auc_ctcvr"),
         "auc_ctcvr", NO_RUN),
    Case("chain-duplicate-ids", lambda t: ["chain", "validate", config_file(t, {
        **yaml.safe_load(QUICK_CHAIN.read_text()), "base": str(QUICK_CHAIN.parent / "../base/mtl_funnel.yaml"),
        "experiments": [{"id": "A", "config": str(E3)}, {"id": "A", "config": str(E3)}]}, "chain.yaml")],
         "A"),
    Case("chain-only-unknown-id", lambda t: ["chain", "run", QUICK_CHAIN, "--only", "E9", "--output", t / "out"],
         "E9", lambda t: {t / "out": None}),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: c.id)
def test_bad_config(case, tmp_path, capsys):
    check(case, tmp_path, capsys)


def check(case: Case, tmp_path: Path, capsys) -> None:
    args = case.setup(tmp_path)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in case.untouched(tmp_path)}
    code, out, err = run_main(args, capsys)
    assert code not in (0, None), f"exit {code}: {out}{err}"
    assert "Traceback" not in out + err, out + err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert case.expected in lines[0], lines[0]
    for path, content in before.items():
        if content is None:
            assert not path.exists(), f"{path} was written"
        else:
            assert path.read_bytes() == content, f"{path} changed"


# ------------------------------------------------------- raw data rows and dataset specs
FEATURES = [
    {"name": "user_id", "type": "categorical", "entity": "user", "source": "user", "transformation": {"kind": "vocab"}},
    {"name": "slot", "type": "categorical", "transformation": {"kind": "identity", "size": 4}},
    {"name": "price", "type": "numeric", "transformation": {"kind": "standardize"}},
]


def table_rows(n: int = 400) -> dict:
    rng = np.random.default_rng(0)
    click = (rng.random(n) < 0.3).astype(int)
    return {"user": [f"u{u}" for u in rng.integers(0, 30, n)], "slot": rng.integers(0, 4, n).tolist(),
            "price": np.round(rng.lognormal(2, 1, n), 2).tolist(), "label_click": click.tolist(),
            "label_convert": (click * (rng.random(n) < 0.4)).tolist()}


def write_csv(path: Path, rows: dict) -> Path:
    columns = list(rows)
    lines = [",".join(columns)] + [",".join(str(rows[c][i]) for c in columns) for i in range(len(rows[columns[0]]))]
    return write(path, "\n".join(lines) + "\n")


def prepare_args(tmp: Path, rows: dict | None = None, csv_text: str | None = None, **spec_changes) -> list:
    """`recsmith data prepare` of a table spec over a CSV (rows, or the file's text)."""
    if csv_text is not None:
        write(tmp / "log.csv", csv_text)
    else:
        write_csv(tmp / "log.csv", rows or table_rows())
    spec = {"name": "toy", "input": {"path": "log.csv"}, "features": FEATURES,
            "labels": {"click": "label_click", "conversion": "label_convert"}, "user_field": "user_id",
            "split": {"kind": "random", "valid_fraction": 0.2, "test_fraction": 0.2, "seed": 1}}
    for key, value in spec_changes.items():
        spec[key] = value
    spec = {k: v for k, v in spec.items() if v is not None}
    write(tmp / "toy.yaml", yaml.safe_dump(spec))
    return ["data", "prepare", BASE_CONFIG, "--set", "data.source=table", "--set", f"data.path={tmp / 'toy.yaml'}"]


def with_column(name: str, values) -> dict:
    rows = table_rows()
    rows[name] = values if isinstance(values, list) else [values] * len(rows["user"])
    return rows


def without_column(name: str) -> dict:
    rows = table_rows()
    del rows[name]
    return rows


def feature(name: str, **changes) -> list[dict]:
    return [{**f, **changes} if f["name"] == name else f for f in FEATURES]


DATA_CASES = [
    Case("column-missing", lambda t: prepare_args(t, without_column("price")), "price"),
    Case("labels-not-binary", lambda t: prepare_args(t, with_column("label_click", 2)),
         "the first: log.csv line 2: label label_click: 2 is not 0 or 1"),
    Case("numbers-that-are-words", lambda t: prepare_args(t, with_column("price", "cheap")),
         "the first: log.csv line 2: price"),
    Case("slot-ids-out-of-range", lambda t: prepare_args(t, with_column("slot", 9)), "the first: log.csv line 2: slot"),
    Case("header-only", lambda t: prepare_args(t, csv_text="user,slot,price,label_click,label_convert\n"), "log.csv"),
    Case("empty-file", lambda t: prepare_args(t, csv_text=""), "log.csv"),
    Case("input-missing", lambda t: prepare_args(t, input={"path": "nowhere.csv"}), "nowhere.csv"),
    Case("parquet-that-is-text", lambda t: [*prepare_args(t, input={"path": "log.parquet"}),
                                            write(t / "log.parquet", "not parquet at all")][:-1], "log.parquet"),
    Case("unknown-transformation", lambda t: prepare_args(t, features=feature("slot", transformation={"kind": "hash"})),
         "hash"),
    Case("duplicate-feature-names", lambda t: prepare_args(t, features=FEATURES + [FEATURES[1]]), "slot"),
    Case("boundaries-not-increasing", lambda t: prepare_args(t, features=feature(
        "price", type="categorical", transformation={"kind": "bucketize", "boundaries": [10, 5, 20]})), "boundaries"),
    Case("split-fractions-too-large", lambda t: prepare_args(t, split={"kind": "random", "valid_fraction": 0.6,
                                                                       "test_fraction": 0.5}),
         "split: valid_fraction + test_fraction is 1.1"),
    Case("label-column-absent", lambda t: prepare_args(t, labels={"click": "clicked", "conversion": "label_convert"}),
         "clicked"),
    Case("spec-unknown-key", lambda t: prepare_args(t, feature_list=FEATURES), "feature_list"),
    Case("user-field-not-a-feature", lambda t: prepare_args(t, user_field="member"), "member"),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.id)
def test_bad_data_and_specs(case, tmp_path, capsys, isolated_cache):
    before = set(Path(isolated_cache).rglob("schema.json"))
    check(case, tmp_path, capsys)
    assert set(Path(isolated_cache).rglob("schema.json")) == before, "a dataset was written"


# ------------------------------------------------------------------ join definitions
def join_args(tmp: Path, **changes) -> list:
    """`recsmith data join` over four tiny CSV logs, with `changes` to the definition."""
    write(tmp / "imp.csv", "request_id,impression_id,ts,user\nr1,i1,100,u1\nr2,i2,200,u2\n")
    write(tmp / "clk.csv", "request_id,impression_id,click_id,ts\nr1,i1,c1,150\n")
    write(tmp / "cv.csv", "click_id,ts\nc1,400\n")
    definition = {"impressions": "imp.csv", "clicks": "clk.csv", "conversions": "cv.csv", "output": "out.parquet",
                  "attribution_window": "7d", **changes}
    write(tmp / "join.yaml", yaml.safe_dump({k: v for k, v in definition.items() if v is not None}))
    return ["data", "join", tmp / "join.yaml"]


NO_JOIN_OUTPUT = lambda tmp: {tmp / "out.parquet": None}  # noqa: E731
JOIN_CASES = [
    Case("window-not-a-duration", lambda t: join_args(t, attribution_window="soon"), "attribution_window",
         NO_JOIN_OUTPUT),
    Case("window-negative", lambda t: join_args(t, attribution_window=-5), "attribution_window", NO_JOIN_OUTPUT),
    Case("engine-unknown", lambda t: join_args(t, engine="postgres"), "postgres", NO_JOIN_OUTPUT),
    Case("join-key-unknown", lambda t: join_args(t, join_key="user"), "join_key", NO_JOIN_OUTPUT),
    Case("impressions-missing", lambda t: join_args(t, impressions="gone.csv"), "gone.csv", NO_JOIN_OUTPUT),
    Case("clicks-without-the-key-column", lambda t: [*join_args(t), write(t / "clk.csv", "click_id,ts\nc1,150\n")][:-1],
         "impression_id", NO_JOIN_OUTPUT),
    Case("definition-unknown-key", lambda t: join_args(t, attribution="7d"), "attribution", NO_JOIN_OUTPUT),
    Case("definition-without-output", lambda t: join_args(t, output=None), "output", NO_JOIN_OUTPUT),
]


@pytest.mark.parametrize("case", JOIN_CASES, ids=lambda c: c.id)
def test_bad_join_definition(case, tmp_path, capsys):
    check(case, tmp_path, capsys)


# ------------------------------------------------------------------ CLI arguments
CLI_CASES = [
    Case("evaluate-not-a-run", lambda t, run: ["evaluate", t], "not a run directory"),
    Case("evaluate-unknown-split", lambda t, run: ["evaluate", run, "--split", "holdout"], "holdout"),
    Case("evaluate-unknown-checkpoint", lambda t, run: ["evaluate", run, "--checkpoint", "first"], "first"),
    Case("explain-a-ranking-run", lambda t, run: ["explain", run, "--user", "1", "--item", "2"], "explain"),
    Case("predict-input-missing", lambda t, run: ["predict", run, "--input", t / "nope.parquet", "--output",
                                                   t / "out.parquet"], "nope.parquet", lambda t: {t / "out.parquet": None}),
    Case("predict-unknown-format", lambda t, run: ["predict", run, "--input", write(t / "rows.xlsx", "x"), "--output",
                                                    t / "out.parquet"], "rows.xlsx", lambda t: {t / "out.parquet": None}),
    Case("predict-unknown-model", lambda t, run: ["predict", "nosuchmodel@production", "--input",
                                                   write(t / "rows.csv", "a\n1\n"), "--output", t / "out.parquet"],
         "nosuchmodel", lambda t: {t / "out.parquet": None}),
    Case("export-not-a-run", lambda t, run: ["export", t, "--out", t / "bundle"], "not a run directory",
         lambda t: {t / "bundle": None}),
    Case("registry-add-not-a-run", lambda t, run: ["registry", "add", "funnel", t, "--registry", t / "reg"],
         "not a run directory"),
    Case("registry-bad-name", lambda t, run: ["registry", "add", "../evil", run, "--registry", t / "reg"], "evil"),
    Case("registry-promote-unknown", lambda t, run: ["registry", "promote", "ghost", "1", "--registry", t / "reg"],
         "ghost"),
    Case("monitor-reference-missing", lambda t, run: ["monitor", "--reference", t / "none", "--current", t / "none",
                                                       "--out", t / "mon"], "none", lambda t: {t / "mon": None}),
    Case("report-not-a-directory", lambda t, run: ["report", t / "missing"], "missing"),
    Case("findings-empty-directory", lambda t, run: ["findings", t], "run"),
    Case("data-info-not-a-dataset", lambda t, run: ["data", "info", t], "schema.json"),
    Case("resume-without-run-dir", lambda t, run: ["train", E3, "--resume"], "--resume needs --run-dir"),
    Case("sweep-unknown-key", lambda t, run: ["sweep", config_file(t, {
        "name": "sw", "base": str(E3), "grid": {"optim.dense.lrr": [1]}, "output_dir": str(t / "sw")}, "sweep.yaml")],
         "lrr", lambda t: {t / "sw": None}),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_bad_cli_arguments(case, ranking_runs, tmp_path, capsys):
    check(Case(case.id, lambda t: case.setup(t, ranking_runs[1]), case.expected, case.untouched), tmp_path, capsys)


# ------------------------------------------------------------------ HTTP requests
SCORE, ADMIN = "score-token-0123", "admin-token-0123"


@pytest.fixture(scope="module")
def service(ranking_runs, tmp_path_factory):
    """funnel@production behind both tokens, 20 rows a request at most, requests logged."""
    from recsmith.serve.app import ServeSettings, build_app
    from recsmith.serve.model_registry import ModelRegistry
    from recsmith.serve.routing import Deployment
    from recsmith.serve.server import start_background
    from recsmith.serve.sources import ModelSource

    root = tmp_path_factory.mktemp("corpus-service")
    ModelRegistry(root / "registry").add("funnel", ranking_runs[0], stage="production")
    source = ModelSource(root / "registry")
    settings = ServeSettings(max_batch=20, token=SCORE, admin_token=ADMIN, log_dir=root / "log", log_fsync_seconds=0)
    server = start_background(build_app(Deployment(source.load("funnel@production")), source, settings,
                                        primary_ref="funnel@production"))
    yield server, root / "log", ranking_runs[0]
    server.stop()


def good_row(run: Path) -> dict:
    from conftest import raw_synthetic_rows

    return raw_synthetic_rows(Path(json.loads((run / "eval.json").read_text())["dataset"])).slice(0, 1).to_pylist()[0]


def as_json(payload) -> dict:
    """A body with JSON's NaN / inf / big-integer literals as they are (httpx's json= refuses some)."""
    return {"content": json.dumps(payload), "headers": {**SCORING, "Content-Type": "application/json"}}


SCORING = {"Authorization": f"Bearer {SCORE}"}
ADMINS = {"Authorization": f"Bearer {ADMIN}"}
# (id, method, path, request(row) -> httpx keyword arguments, expected status, words the answer must hold)
HTTP_CASES = [
    ("body-not-json", "post", "/predict", lambda r: {"content": b"rows=1", "headers": SCORING}, 422, ["JSON object"]),
    ("body-broken-json", "post", "/predict", lambda r: {"content": b'{"rows": [', "headers": {
        **SCORING, "Content-Type": "application/json"}}, 422, ["JSON object"]),
    ("rows-empty", "post", "/predict", lambda r: {"json": {"rows": []}, "headers": SCORING}, 422, ["rows"]),
    ("rows-not-a-list", "post", "/predict", lambda r: {"json": {"rows": r}, "headers": SCORING}, 422, ["rows"]),
    ("field-missing", "post", "/predict", lambda r: {"json": {"rows": [{k: v for k, v in r.items() if k != "hour"}]},
                                                     "headers": SCORING}, 422, ["hour", "row 0"]),
    ("text-for-a-number", "post", "/predict", lambda r: {"json": {"rows": [{**r, "hour": "noon"}]},
                                                         "headers": SCORING}, 422, ["hour", "row 0"]),
    ("number-overflows-float32", "post", "/predict", lambda r: as_json({"rows": [r, {**r, "item_price": 1e308}]}),
     422, ["item_price", "row 1"]),
    ("integer-beyond-64-bits", "post", "/predict", lambda r: as_json({"rows": [{**r, "user_id": 2 ** 64}]}),
     422, ["user_id", "row 0"]),
    ("unknown-top-level-key", "post", "/predict", lambda r: {"json": {"rows": [r], "candidates": 3},
                                                             "headers": SCORING}, 422, ["candidates"]),
    ("request-id-too-long", "post", "/predict", lambda r: {"json": {"rows": [r], "request_id": "x" * 500},
                                                           "headers": SCORING}, 422, ["request_id"]),
    ("too-many-rows", "post", "/predict", lambda r: {"json": {"rows": [r] * 21}, "headers": SCORING}, 413, ["21", "20"]),
    ("body-over-the-byte-limit", "post", "/predict", lambda r: {"content": b"{" + b" " * 200_000 + b"}",
                                                                "headers": {**SCORING, "Content-Type": "application/json"}},
     413, ["bytes"]),
    ("no-token", "post", "/predict", lambda r: {"json": {"rows": [r]}}, 401, ["token"]),
    ("wrong-token", "post", "/predict", lambda r: {"json": {"rows": [r]}, "headers": {"Authorization": "Bearer nope"}},
     401, ["token"]),
    ("admin-with-the-scoring-token", "post", "/admin/swap", lambda r: {"json": {"model": "funnel@v1"},
                                                                       "headers": SCORING}, 401, ["token"]),
    ("admin-swap-to-a-directory", "post", "/admin/swap", lambda r: {"json": {"model": "/tmp"}, "headers": ADMINS},
     403, ["registry"]),
    ("admin-swap-unknown-model", "post", "/admin/swap", lambda r: {"json": {"model": "ghost@v9"}, "headers": ADMINS},
     404, ["ghost@v9"]),
    ("canary-takes-everything", "post", "/admin/canary", lambda r: {"json": {"model": "funnel@v1", "share": 1.0},
                                                                    "headers": ADMINS}, 422, ["share"]),
    ("foreign-host-header", "get", "/metadata", lambda r: {"headers": {**SCORING, "Host": "evil.example"}}, 403,
     ["evil.example"]),
]


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c[0])
def test_bad_http_request(case, service):
    import httpx

    server, log_dir, run = service
    _, method, path, request, status, words = case
    before = httpx.get(f"{server.url}/health").json()
    answer = getattr(httpx, method)(f"{server.url}{path}", timeout=30, **request(good_row(run)))
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    assert all(word in detail for word in words), detail
    assert str(log_dir.parent) not in detail and "registry.json" not in detail, f"a server path in {detail!r}"
    after = httpx.get(f"{server.url}/health").json()
    assert after["client_errors"] == before["client_errors"] + 1 and after["server_errors"] == 0
    assert after["model"] == "funnel@v1" and after["rows"] == before["rows"]  # nothing scored, nothing swapped


def test_the_request_log_holds_only_answered_requests(service):
    """After the corpus, one good request: the log holds exactly its row, none of the refused ones."""
    import httpx
    import pyarrow.parquet as pq

    from recsmith.serve.request_log import SEGMENT_GLOB, read_segment

    server, log_dir, run = service
    answer = httpx.post(f"{server.url}/predict", json={"rows": [good_row(run)], "request_id": "good-1"},
                        headers=SCORING, timeout=30)
    assert answer.status_code == 200, answer.text
    tables = [read_segment(p) for p in log_dir.glob(SEGMENT_GLOB)] + [pq.read_table(p) for p in log_dir.glob("*.parquet")]
    logged = [r for t in tables if t is not None for r in t.column("request_id").to_pylist()]
    assert logged == ["good-1"]
