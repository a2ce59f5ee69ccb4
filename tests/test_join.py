"""Sample joining: DuckDB and Spark against a brute-force reference, every rule's count,
and one-line errors for bad definitions and bad inputs."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from recsmith.data.join import JoinDefinition, load_definition, parse_window, run_join
from recsmith.errors import ConfigError, DataError

EPOCH = datetime(1970, 1, 1)
WINDOW = 3 * 86400
COUNT_KEYS = (
    "impressions_in", "duplicate_impressions", "clicks_in", "orphan_clicks", "duplicate_clicks",
    "attributed_clicks", "conversions_in", "orphan_conversions", "unattributed_conversions",
    "conversions_before_click", "late_conversions", "duplicate_conversions", "attributed_conversions",
    "feature_rows_in", "duplicate_feature_rows", "impressions_without_features", "rows_out",
    "clicked_impressions", "converted_impressions",
)


# ----------------------------------------------------------------------- reference
def micros(value) -> int:
    """Event time in microseconds: datetimes as they are, integers as epoch seconds."""
    return (value - EPOCH) // timedelta(microseconds=1) if isinstance(value, datetime) else value * 1_000_000


def first_by(rows: list[dict], columns: list[str]) -> dict:
    """The first row ordered by `columns` ascending, nulls last."""
    return min(rows, key=lambda r: tuple((r[c] is None, r[c]) for c in columns))


def reference_join(impressions, clicks, conversions, feature_log, *, join_key="impression_id",
                   window=WINDOW, prefix="") -> tuple[list[dict], dict]:
    """The join rules (recsmith.data.join) over lists of dicts, one rule at a time."""
    window_us = window * 1_000_000
    counts = dict.fromkeys(COUNT_KEYS, 0)

    by_impression = defaultdict(list)
    for row in impressions:
        by_impression[row["impression_id"]].append(row)
    order = ["ts", *(c for c in impressions[0] if c != "ts")] if impressions else []
    kept = [first_by(rows, order) for rows in by_impression.values()]
    counts.update(impressions_in=len(impressions), rows_out=len(kept),
                  duplicate_impressions=len(impressions) - len(kept))

    impression_keys = {row[join_key] for row in kept if row[join_key] is not None}
    clicks_by_key = defaultdict(list)
    for click in clicks:
        if click[join_key] in impression_keys:
            clicks_by_key[click[join_key]].append(click)
    attributed = {key: min(rows, key=lambda c: (micros(c["ts"]), c["click_id"] is None, c["click_id"]))
                  for key, rows in clicks_by_key.items()}
    matched = sum(len(rows) for rows in clicks_by_key.values())
    counts.update(clicks_in=len(clicks), orphan_clicks=len(clicks) - matched, attributed_clicks=len(attributed),
                  duplicate_clicks=matched - len(attributed))

    click_ids = {c["click_id"] for c in clicks if c["click_id"] is not None}
    attributed_times = defaultdict(list)  # click_id -> times of attributed clicks with that id
    for click in attributed.values():
        if click["click_id"] is not None:
            attributed_times[click["click_id"]].append(micros(click["ts"]))
    converted_clicks, in_window = set(), 0
    for conversion in conversions:
        delays = [micros(conversion["ts"]) - t for t in attributed_times.get(conversion["click_id"], [])]
        if any(0 <= d <= window_us for d in delays):
            in_window += 1
            converted_clicks.add(conversion["click_id"])
        elif any(d > window_us for d in delays):
            counts["late_conversions"] += 1
        elif delays:
            counts["conversions_before_click"] += 1
        elif conversion["click_id"] in click_ids:
            counts["unattributed_conversions"] += 1
        else:
            counts["orphan_conversions"] += 1
    counts.update(conversions_in=len(conversions), attributed_conversions=len(converted_clicks),
                  duplicate_conversions=in_window - len(converted_clicks))

    def converted(click) -> bool:
        return any(0 <= micros(v["ts"]) - micros(click["ts"]) <= window_us
                   for v in conversions if v["click_id"] is not None and v["click_id"] == click["click_id"])

    features = {}
    if feature_log is not None:
        by_request = defaultdict(list)
        for row in feature_log:
            by_request[row["request_id"]].append(row)
        columns = list(feature_log[0])
        order = (["ts"] if "ts" in columns else []) + [c for c in columns if c != "ts"]
        features = {rid: first_by(rows, order) for rid, rows in by_request.items() if rid is not None}
        counts.update(feature_rows_in=len(feature_log), duplicate_feature_rows=len(feature_log) - len(by_request))
        feature_columns = [c for c in columns if c not in ("request_id", "ts")]
    out = []
    for row in kept:
        click = attributed.get(row[join_key])
        sample = {**row, "label_click": int(click is not None),
                  "label_convert": int(click is not None and converted(click))}
        if feature_log is not None:
            served = features.get(row["request_id"])
            counts["impressions_without_features"] += served is None
            sample.update({prefix + c: served[c] if served else None for c in feature_columns})
        out.append(sample)
    if feature_log is None:
        counts["impressions_without_features"] = len(out)
    counts.update(clicked_impressions=sum(r["label_click"] for r in out),
                  converted_impressions=sum(r["label_convert"] for r in out))
    return sorted(out, key=lambda r: r["impression_id"]), counts


# ------------------------------------------------------------------------- logs
IMPRESSION_SCHEMA = pa.schema([("request_id", pa.string()), ("impression_id", pa.string()),
                               ("ts", pa.timestamp("us")), ("ad_id", pa.int64()), ("slot", pa.int32()),
                               ("bid", pa.float64()), ("campaign", pa.string())])
CLICK_SCHEMA = pa.schema([("click_id", pa.string()), ("impression_id", pa.string()),
                          ("request_id", pa.string()), ("ts", pa.int64())])
CONVERSION_SCHEMA = pa.schema([("conversion_id", pa.string()), ("click_id", pa.string()),
                               ("ts", pa.timestamp("us"))])
FEATURE_SCHEMA = pa.schema([("request_id", pa.string()), ("ts", pa.timestamp("us")),
                            ("ctr_7d", pa.float64()), ("age_bucket", pa.int64()), ("device", pa.string())])


def random_logs(seed: int, impressions: int = 400) -> dict[str, list[dict]]:
    """Logs with every case the rules name: duplicate impressions (also tied on ts),
    orphan and duplicate clicks (also tied on ts), conversions at 0, inside, at and beyond
    the window, before their click, on dropped clicks, without a click, repeated; missing
    and repeated feature rows; requests with two impressions."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5)
    imps = []
    for i in range(impressions):
        request = f"r{i // 2 if i % 7 == 0 else i + impressions:05d}"  # some requests show two ads
        imps.append({"request_id": request, "impression_id": f"i{i:05d}",
                     "ts": start + timedelta(seconds=rng.randrange(86400)), "ad_id": rng.randrange(50),
                     "slot": rng.randrange(4), "bid": rng.choice([None, round(rng.random(), 3)]),
                     "campaign": rng.choice(["a", "b", None])})
    for row in rng.sample(imps, impressions // 10):
        twin = dict(row)
        change = rng.choice(["later", "earlier", "tie", "copy"])
        if change == "later":
            twin["ts"] += timedelta(seconds=rng.randrange(1, 60))
        elif change == "earlier":
            twin["ts"] -= timedelta(seconds=rng.randrange(1, 60))
        if change != "copy":
            twin.update(ad_id=rng.randrange(50), slot=rng.randrange(4))
        imps.append(twin)
    rng.shuffle(imps)

    clicks, n = [], 0
    for row in rng.sample(imps, impressions // 3):
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            n += 1
            ts = int((row["ts"] - EPOCH).total_seconds()) + rng.choice([0, 5, rng.randrange(600)])
            clicks.append({"click_id": f"c{n:05d}", "impression_id": row["impression_id"],
                           "request_id": row["request_id"], "ts": ts})
    for j in range(impressions // 20):  # clicks on impressions that were never logged
        n += 1
        clicks.append({"click_id": f"c{n:05d}", "impression_id": rng.choice([f"x{j}", None]),
                       "request_id": rng.choice([f"x{j}", None]), "ts": 1_767_600_000 + j})

    conversions, m = [], 0
    delays = [0, 1, 3600, WINDOW - 1, WINDOW, WINDOW + 1, 10 * WINDOW, -1, -3600]
    for click in rng.sample(clicks, len(clicks) // 2):
        for _ in range(rng.choice([1, 1, 2])):
            m += 1
            conversions.append({"conversion_id": f"v{m:05d}", "click_id": click["click_id"],
                                "ts": EPOCH + timedelta(seconds=click["ts"] + rng.choice(delays))})
    for j in range(impressions // 40):  # conversions whose click was never logged
        m += 1
        conversions.append({"conversion_id": f"v{m:05d}", "click_id": rng.choice([f"y{j}", None]),
                            "ts": start + timedelta(seconds=j)})

    features = []
    requests = sorted({row["request_id"] for row in imps})
    for request in rng.sample(requests, int(len(requests) * 0.85)) + [f"z{j}" for j in range(5)]:
        for _ in range(rng.choice([1, 1, 1, 1, 2])):
            features.append({"request_id": request,
                             "ts": start + timedelta(seconds=rng.choice([0, rng.randrange(100)])),
                             "ctr_7d": rng.choice([None, round(rng.random(), 4)]), "age_bucket": rng.randrange(8),
                             "device": rng.choice(["ios", "android", "web"])})
    rng.shuffle(features)
    return {"impressions": imps, "clicks": clicks, "conversions": conversions, "feature_log": features}


SCHEMAS = {"impressions": IMPRESSION_SCHEMA, "clicks": CLICK_SCHEMA, "conversions": CONVERSION_SCHEMA,
           "feature_log": FEATURE_SCHEMA}


def write_logs(directory, logs: dict[str, list[dict]], schemas=SCHEMAS) -> dict[str, str]:
    """Each log as Parquet in `directory`, impressions split over two files of a folder."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table, rows in logs.items():
        data = pa.Table.from_pylist(rows, schema=schemas.get(table))
        if table == "impressions":
            folder = directory / table
            folder.mkdir()
            half = len(rows) // 2
            pq.write_table(data.slice(0, half), folder / "part-0.parquet")
            pq.write_table(data.slice(half), folder / "part-1.parquet")
            paths[table] = str(folder)
        else:
            pq.write_table(data, directory / f"{table}.parquet")
            paths[table] = str(directory / f"{table}.parquet")
    return paths


def definition(paths: dict[str, str], output, **fields) -> JoinDefinition:
    return JoinDefinition(**paths, output=str(output), attribution_window=fields.pop("attribution_window", WINDOW),
                          **fields)


def read_sorted(path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["impression_id"])


def report_counts(report) -> dict:
    return {key: getattr(report, key) for key in COUNT_KEYS}


# ------------------------------------------------------------ hand-made edge cases
EDGE = {
    "impressions": [
        {"request_id": "r1", "impression_id": "i1", "ts": 100, "slot": 1},
        {"request_id": "r2", "impression_id": "i2", "ts": 100, "slot": 1},
        {"request_id": "r3", "impression_id": "i3", "ts": 100, "slot": 1},
        {"request_id": "r4", "impression_id": "i4", "ts": 100, "slot": 1},
        {"request_id": "r4", "impression_id": "i4", "ts": 50, "slot": 2},  # duplicate, earlier: kept
        {"request_id": "r5", "impression_id": "i5", "ts": 100, "slot": 1},
    ],
    "clicks": [
        {"click_id": "c1", "impression_id": "i1", "ts": 110},
        {"click_id": "c1b", "impression_id": "i1", "ts": 120},  # second click on i1
        {"click_id": "c2", "impression_id": "i2", "ts": 130},
        {"click_id": "c3", "impression_id": "i3", "ts": 140},
        {"click_id": "cx", "impression_id": "i9", "ts": 150},  # no such impression
        {"click_id": "c5", "impression_id": "i5", "ts": 160},
    ],
    "conversions": [
        {"conversion_id": "v1", "click_id": "c1", "ts": 110},  # delay 0: counted
        {"conversion_id": "v1b", "click_id": "c1", "ts": 210},  # delay = window: counted, duplicate
        {"conversion_id": "v2", "click_id": "c2", "ts": 231},  # window + 1: late
        {"conversion_id": "v3", "click_id": "c3", "ts": 139},  # before its click
        {"conversion_id": "v4", "click_id": "c1b", "ts": 130},  # on the duplicate click
        {"conversion_id": "v5", "click_id": "cx", "ts": 160},  # on the orphan click
        {"conversion_id": "v6", "click_id": "cz", "ts": 200},  # no such click
        {"conversion_id": "v7", "click_id": "c5", "ts": 200},  # counted
    ],
    "feature_log": [
        {"request_id": "r1", "score": 1.0},
        {"request_id": "r2", "score": 2.5},
        {"request_id": "r2", "score": 2.0},  # repeated request: the smaller row is kept
        {"request_id": "r4", "score": 4.0},
        {"request_id": "r9", "score": 9.0},  # no impression
    ],
}
EDGE_COUNTS = {
    "impressions_in": 6, "duplicate_impressions": 1, "rows_out": 5,
    "clicks_in": 6, "orphan_clicks": 1, "duplicate_clicks": 1, "attributed_clicks": 4,
    "conversions_in": 8, "orphan_conversions": 1, "unattributed_conversions": 2, "conversions_before_click": 1,
    "late_conversions": 1, "duplicate_conversions": 1, "attributed_conversions": 2,
    "feature_rows_in": 5, "duplicate_feature_rows": 1, "impressions_without_features": 2,
    "clicked_impressions": 4, "converted_impressions": 2,
}
EDGE_ROWS = [  # impression_id, slot, label_click, label_convert, score
    ("i1", 1, 1, 1, 1.0), ("i2", 1, 1, 0, 2.0), ("i3", 1, 1, 0, None), ("i4", 2, 0, 0, 4.0), ("i5", 1, 1, 1, None),
]


def check_edge_output(report, path) -> None:
    assert report_counts(report) == EDGE_COUNTS
    rows = read_sorted(path)
    assert [(r["impression_id"], r["slot"], r["label_click"], r["label_convert"], r["feat_score"])
            for r in rows] == EDGE_ROWS


@pytest.fixture(scope="module")
def edge_paths(tmp_path_factory):
    return write_logs(tmp_path_factory.mktemp("edge"), EDGE, schemas={})


@pytest.fixture(scope="module")
def random_paths(tmp_path_factory):
    """Two random log sets (seed → (logs, paths)), shared by the DuckDB and Spark tests."""
    out = {}
    for seed in (1, 2):
        logs = random_logs(seed)
        out[seed] = logs, write_logs(tmp_path_factory.mktemp(f"logs{seed}"), logs)
    return out


# ------------------------------------------------------------------------ DuckDB
def test_edge_cases_are_each_counted_duckdb(edge_paths, tmp_path):
    report = run_join(definition(edge_paths, tmp_path / "out.parquet", attribution_window=100,
                                 feature_prefix="feat_"))
    check_edge_output(report, tmp_path / "out.parquet")
    assert reference_join(*EDGE.values(), window=100, prefix="feat_")[1] == EDGE_COUNTS


@pytest.mark.parametrize("join_key", ["impression_id", "request_id"])
@pytest.mark.parametrize("seed", [1, 2])
def test_duckdb_matches_reference_on_random_logs(random_paths, tmp_path, seed, join_key):
    logs, paths = random_paths[seed]
    report = run_join(definition(paths, tmp_path / "samples.parquet", join_key=join_key))
    rows, counts = reference_join(*logs.values(), join_key=join_key)
    assert report_counts(report) == counts
    assert read_sorted(report.output) == rows
    # Every case the generator plants occurs, so no rule is compared on zeros alone.
    assert all(counts[k] > 0 for k in COUNT_KEYS), counts
    assert counts["clicks_in"] == sum(counts[k] for k in ("orphan_clicks", "duplicate_clicks", "attributed_clicks"))
    assert counts["conversions_in"] == sum(counts[k] for k in (
        "orphan_conversions", "unattributed_conversions", "conversions_before_click", "late_conversions",
        "duplicate_conversions", "attributed_conversions"))


def test_output_schema_report_file_and_overrides(random_paths, tmp_path):
    logs, paths = random_paths[1]
    report = run_join(definition(paths, tmp_path / "unused.parquet", feature_prefix="f_", engine="spark"),
                      engine="duckdb", output=tmp_path / "deep" / "samples.parquet")
    assert report.output == str(tmp_path / "deep" / "samples.parquet")
    assert not (tmp_path / "unused.parquet").exists()
    schema = pq.read_schema(report.output)
    assert schema.names == [*IMPRESSION_SCHEMA.names, "label_click", "label_convert",
                            "f_ctr_7d", "f_age_bucket", "f_device"]
    assert schema.field("label_click").type == pa.int8() and schema.field("ts").type == pa.timestamp("us")
    saved = json.loads((tmp_path / "deep" / "join_report.json").read_text())
    assert saved == report.to_dict() and saved["engine"] == "duckdb" and saved["join_key"] == "impression_id"
    assert saved["attribution_window_seconds"] == WINDOW and saved["seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["join_report.json", "samples.parquet"]


def test_csv_glob_and_renamed_columns(tmp_path):
    """CSV inputs, a glob, other column names and no feature log give the same labels."""
    logs = random_logs(3, impressions=120)
    names = {"impression_id": "imp", "request_id": "req", "click_id": "clk", "ts": "event_time"}
    for table in ("impressions", "clicks", "conversions"):
        rows = [{names.get(c, c): v for c, v in row.items()} for row in logs[table]]
        pa_table = pa.Table.from_pylist(rows, schema=pa.schema(
            [f.with_name(names.get(f.name, f.name)) for f in SCHEMAS[table]]))
        pacsv.write_csv(pa_table, tmp_path / f"{table}.csv")
    report = run_join(JoinDefinition(
        impressions=str(tmp_path / "impressions.csv"), clicks=str(tmp_path / "cl*.csv"),
        conversions=str(tmp_path / "conversions.csv"), output=str(tmp_path / "out.parquet"),
        attribution_window="3d", columns={k: v for k, v in names.items()}))
    rows, counts = reference_join(logs["impressions"], logs["clicks"], logs["conversions"], None)
    assert report_counts(report) == counts
    got = sorted(pq.read_table(report.output).to_pylist(), key=lambda r: r["imp"])
    assert [(r["imp"], r["label_click"], r["label_convert"]) for r in got] == \
        [(r["impression_id"], r["label_click"], r["label_convert"]) for r in rows]


def test_integer_and_timestamp_times_agree(tmp_path):
    """Epoch seconds and timestamps are the same clock; the window is inclusive."""
    click_seconds = int((datetime(2026, 1, 1, 0, 1) - EPOCH).total_seconds())
    logs = {
        "impressions": [{"request_id": "r1", "impression_id": "i1", "ts": datetime(2026, 1, 1)}],
        "clicks": [{"click_id": "c1", "impression_id": "i1", "ts": click_seconds}],
        "conversions": [{"click_id": "c1", "ts": datetime(2026, 1, 8, 0, 1)}],  # exactly 7 days later
    }
    paths = write_logs(tmp_path, logs, schemas={})
    assert run_join(definition(paths, tmp_path / "a.parquet", attribution_window="7d")).converted_impressions == 1
    assert run_join(definition(paths, tmp_path / "b.parquet", attribution_window="167h")).late_conversions == 1


# ------------------------------------------------------------------ definitions
def test_definition_file_paths_and_window(tmp_path):
    path = tmp_path / "defs" / "join.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"impressions": "logs/imp.parquet", "clicks": "/abs/clicks.parquet",
                                    "conversions": "logs/conv", "output": "out/samples.parquet",
                                    "attribution_window": "2h", "join_key": "request_id",
                                    "columns": {"ts": "event_time"}}))
    loaded = load_definition(path)
    assert loaded.impressions == str(path.parent / "logs" / "imp.parquet")
    assert loaded.clicks == "/abs/clicks.parquet" and loaded.feature_log is None
    assert loaded.output == str(path.parent / "out" / "samples.parquet")
    assert loaded.attribution_window == 7200 and loaded.key_column == "request_id"
    assert loaded.columns.ts == "event_time" and loaded.columns.click_id == "click_id"
    assert [parse_window(v) for v in (0, 45, "45", "45s", "90m", "12h", "7d", "2w")] == \
        [0, 45, 45, 45, 5400, 43200, 604800, 1209600]


@pytest.mark.parametrize("fields, message", [
    ({"colums": {}}, "colums: unknown key (did you mean 'columns'?)"),
    ({"attribution_window": "7 days"}, "attribution_window: expected whole seconds or a duration like '7d'"),
    ({"attribution_window": -5}, "attribution_window: must be ≥ 0 seconds"),
    ({"attribution_window": 1.5}, "attribution_window: expected whole seconds"),
    ({"join_key": "click_id"}, "join_key: must be one of 'impression_id' or 'request_id'"),
    ({"engine": "duckbd"},
     "engine: unknown join engine 'duckbd' (choose from duckdb, spark) (did you mean 'duckdb'?)"),
    ({"columns": {"ts": 3}}, "columns.ts: expected text, got 3"),
    ({"output": None}, "output: expected text, got None"),
])
def test_bad_definition_is_one_line_naming_the_key(tmp_path, fields, message):
    path = tmp_path / "join.yaml"
    data = {"impressions": "i.parquet", "clicks": "c.parquet", "conversions": "v.parquet",
            "output": "o.parquet", "attribution_window": "1d", **fields}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_definition(path)
    text = str(err.value)
    assert message in text and "\n" not in text and str(path.name) in text


def test_missing_definition_key_and_file(tmp_path):
    path = tmp_path / "join.yaml"
    path.write_text("impressions: i.parquet\nclicks: c.parquet\nconversions: v.parquet\noutput: o.parquet\n")
    with pytest.raises(ConfigError, match="attribution_window: required key is missing"):
        load_definition(path)
    with pytest.raises(ConfigError, match="config file not found"):
        run_join(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ bad inputs
def test_missing_input_file_names_the_path(edge_paths, tmp_path):
    paths = {**edge_paths, "clicks": str(tmp_path / "nowhere" / "clicks.parquet")}
    with pytest.raises(DataError, match=r"clicks: input not found: .*nowhere/clicks\.parquet"):
        run_join(definition(paths, tmp_path / "out.parquet"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="conversions: no Parquet or CSV files in"):
        run_join(definition({**edge_paths, "conversions": str(empty)}, tmp_path / "out.parquet"))


def test_missing_column_names_the_column(tmp_path):
    logs = {**EDGE, "clicks": [{"click": r["click_id"], "impression_id": r["impression_id"], "ts": r["ts"]}
                               for r in EDGE["clicks"]]}
    paths = write_logs(tmp_path / "logs", logs, schemas={})
    with pytest.raises(DataError) as err:
        run_join(definition(paths, tmp_path / "out.parquet"))
    assert "clicks (" in str(err.value)
    assert "required column 'click_id' not found (did you mean 'click'?)" in str(err.value)
    with pytest.raises(DataError, match="required column 'request_id' not found"):
        run_join(definition(paths, tmp_path / "out.parquet", join_key="request_id"))


def test_empty_result_writes_nothing_and_keeps_old_output(tmp_path):
    no_rows = pa.schema([("request_id", pa.string()), ("impression_id", pa.string()), ("ts", pa.int64())])
    paths = write_logs(tmp_path / "logs", {**EDGE, "impressions": []}, schemas={"impressions": no_rows})
    out = tmp_path / "out" / "samples.parquet"
    out.parent.mkdir()
    out.write_text("previous")
    with pytest.raises(DataError, match=r"empty result: impressions \(.*impressions\) has no rows"):
        run_join(definition(paths, out))
    assert out.read_text() == "previous" and sorted(p.name for p in out.parent.iterdir()) == ["samples.parquet"]


@pytest.mark.parametrize("change, message", [
    ({"clicks": [{"click_id": "c1", "impression_id": 1, "ts": 110}]},
     "clicks (.*): join column 'impression_id' is integer but in impressions it is string"),
    ({"conversions": [{"click_id": "c1", "ts": 1.5}]},
     "conversions (.*): column 'ts' must be a timestamp or integer epoch seconds, not float"),
    ({"clicks": [{"click_id": "c1", "impression_id": "i1", "ts": None},
                 {"click_id": "c2", "impression_id": "i1", "ts": 1}]},
     "clicks (.*): 1 rows have no 'ts'"),
    ({"feature_log": [{"request_id": "r1", "slot": 3}]},
     "output column 'slot' from feature_log column 'slot' clashes with one from impressions; set feature_prefix"),
])
def test_bad_columns_are_one_clear_error(tmp_path, change, message):
    paths = write_logs(tmp_path / "logs", {**EDGE, **change}, schemas={})
    with pytest.raises(DataError, match=message.replace("(.*)", r"\(.*\)")):
        run_join(definition(paths, tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()


# ------------------------------------------------------------------------ Spark
@pytest.fixture(scope="module")
def spark():
    """One local Spark session for this module (startup costs seconds)."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime")
    from recsmith.data.join.spark_engine import local_session

    session = local_session("local[2]")
    # Tiny inputs: planning and code generation, not data, dominate the time.
    for key, value in {"spark.sql.adaptive.enabled": "false", "spark.sql.shuffle.partitions": "1",
                       "spark.sql.codegen.wholeStage": "false"}.items():
        session.conf.set(key, value)
    yield session
    session.stop()


def test_spark_matches_duckdb_and_reference(spark, random_paths, tmp_path):
    logs, paths = random_paths[1]
    for join_key in ("impression_id", "request_id"):
        join = definition(paths, tmp_path / join_key / "samples.parquet", join_key=join_key, feature_prefix="f_")
        by_spark = run_join(join, engine="spark")
        rows = read_sorted(by_spark.output)
        by_duckdb = run_join(join, engine="duckdb", output=tmp_path / join_key / "duckdb.parquet")
        expected_rows, expected_counts = reference_join(*logs.values(), join_key=join_key, prefix="f_")
        assert report_counts(by_spark) == report_counts(by_duckdb) == expected_counts
        assert rows == read_sorted(by_duckdb.output) == expected_rows
        assert pq.read_schema(by_spark.output).names == pq.read_schema(by_duckdb.output).names
        assert by_spark.engine == "spark" and spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert not list(tmp_path.rglob("*.spark"))  # the part-file folder is cleaned up


def test_spark_edge_cases_and_errors(spark, edge_paths, tmp_path):
    report = run_join(definition(edge_paths, tmp_path / "out.parquet", attribution_window=100,
                                 feature_prefix="feat_", engine="spark"))
    check_edge_output(report, tmp_path / "out.parquet")
    with pytest.raises(DataError, match=r"impressions \(.*\): required column 'ts_click' not found"):
        run_join(definition(edge_paths, tmp_path / "bad.parquet", columns={"ts": "ts_click"}), engine="spark")
    assert not spark.sparkContext._jsc.sc().isStopped()  # the caller's session is left running
