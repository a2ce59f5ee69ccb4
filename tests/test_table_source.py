"""Generic CSV / Parquet source: feature definitions, fitted encoders, rejects, splits."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recsmith.config.schema import DataConfig
from recsmith.data.batches import load_split
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.errors import ConfigError, DataError
from recsmith.features.pipeline import FeaturePipeline

FEATURES = [
    {"name": "user_id", "type": "categorical", "entity": "user", "source": "user",
     "transformation": {"kind": "vocab"}, "owner": "ranking", "tags": ["id"]},
    {"name": "item_id", "type": "categorical", "entity": "item", "source": "item",
     "transformation": {"kind": "vocab", "min_count": 2}},
    {"name": "slot", "type": "categorical", "transformation": {"kind": "identity", "size": 4}},
    {"name": "age_bucket", "type": "categorical", "entity": "user", "source": "age",
     "transformation": {"kind": "bucketize", "boundaries": [18, 30, 50]}},
    {"name": "price", "type": "numeric", "entity": "item", "transformation": {"kind": "standardize", "log1p": True}},
]


def make_rows(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    click = (rng.random(n) < 0.3).astype(int)
    return {
        "user": [f"u{u}" for u in rng.integers(0, 50, n)],
        "item": [f"i{i}" for i in rng.zipf(1.5, n) % 300],
        "slot": rng.integers(0, 4, n).tolist(),
        "age": rng.integers(10, 70, n).tolist(),
        "price": np.round(rng.lognormal(2, 1, n), 2).tolist(),
        "label_click": click.tolist(),
        "label_convert": (click * (rng.random(n) < 0.4)).tolist(),
    }


def write_csv(path, rows, extra_lines=()):
    columns = list(rows)
    lines = [",".join(columns)] + [",".join(str(rows[c][i]) for c in columns) for i in range(len(rows["user"]))]
    lines[5:5] = list(extra_lines)  # malformed lines at line numbers 6, 7, ... (header = line 1)
    path.write_text("\n".join(lines) + "\n")


BAD_LINES = [
    "u1,i1,0,30,12.5,1",                 # too few fields
    "u1,i1,0,30,12.5,1,0,extra",         # too many fields (broken separators)
    "u1,i1,0,30,cheap,1,0",              # a non-number where a number belongs
    "u1,i1,9,30,12.5,1,0",               # slot id out of range
    "u1,i1,0,30,12.5,2,0",               # a label that is not 0/1
    "u1,i1,0,30,12.5,0,1",               # a conversion without a click
]


def spec_file(tmp_path, input_path, **extra):
    spec = {"name": "toy_ads", "input": {"path": str(input_path)}, "features": FEATURES,
            "labels": {"click": "label_click", "conversion": "label_convert"}, "user_field": "user_id",
            "split": {"kind": "random", "valid_fraction": 0.2, "test_fraction": 0.2, "seed": 1}, **extra}
    path = tmp_path / "toy_ads.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def prepare(spec_path, max_bad_rows=0.01):
    return resolve_dataset(DataConfig(source="table", path=str(spec_path), max_bad_rows=max_bad_rows))


def test_csv_prepares_with_fitted_encoders_and_logged_rejects(tmp_path):
    rows = make_rows()
    write_csv(tmp_path / "log.csv", rows, BAD_LINES)
    out = prepare(spec_file(tmp_path, "log.csv"))
    schema = DatasetSchema.load(out)
    assert [t.name for t in schema.tasks] == ["ctr", "cvr"]
    assert schema.sparse_names == ["user_id", "item_id", "slot", "age_bucket"]
    assert schema.dense_names == ["price"]
    assert sum(schema.split_rows.values()) == 2000 and schema.meta["rows_rejected"] == 6
    assert all(0.1 < schema.split_rows[s] / 2000 < 0.3 for s in ("valid", "test"))
    sizes = {f.name: f.vocab_size for f in schema.sparse}
    assert sizes["slot"] == 5 and sizes["age_bucket"] == 5 and sizes["user_id"] <= 51
    rejects = [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [6, 7, 8, 9, 10, 11]  # header is line 1, then 4 good rows
    reasons = " | ".join(r["reason"] for r in rejects)
    for expected in ("expected 7 fields, found 6", "found 8", "price: 'cheap' is not a number",
                     "slot: out of range", "label label_click: 2 is not 0 or 1", "conversion = 1 where click = 0"):
        assert expected in reasons
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["age_bucket"]["boundaries"] == [18, 30, 50]
    assert vocab["price"]["scale"] > 0 and len(vocab["item_id"]["values"]) == sizes["item_id"] - 1
    train = load_split(out, schema, "train")
    assert train.sparse.shape[1] == 4 and bool((train.sparse[:, 2] >= 1).all())


def test_too_many_bad_rows_fail_and_keep_the_rejects(tmp_path):
    write_csv(tmp_path / "log.csv", make_rows(200), BAD_LINES)
    with pytest.raises(DataError, match=r"6 of 206 rows are malformed \(2.91%, more than --max-bad-rows 0.10%\)") as info:
        prepare(spec_file(tmp_path, "log.csv"), max_bad_rows=0.001)
    rejects = str(info.value).split("see ")[-1]
    assert len(open(rejects).read().splitlines()) == 6


def test_parquet_and_csv_inputs_prepare_to_the_same_dataset(tmp_path):
    rows = make_rows(1500, seed=3)
    rows["part"] = [("train", "valid", "test")[i % 3] for i in range(1500)]
    write_csv(tmp_path / "log.csv", rows)
    pq.write_table(pa.table(rows), tmp_path / "log.parquet")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    split = {"kind": "column", "column": "part"}
    from_csv = prepare(spec_file(tmp_path / "a", tmp_path / "log.csv", split=split))
    from_parquet = prepare(spec_file(tmp_path / "b", tmp_path / "log.parquet", split=split))
    assert DatasetSchema.load(from_csv).split_rows == {"train": 500, "valid": 500, "test": 500}
    for split in ("train", "valid", "test"):
        assert pq.read_table(from_csv / f"{split}.parquet").equals(pq.read_table(from_parquet / f"{split}.parquet"))


def test_serving_path_maps_unseen_and_missing_values_safely(tmp_path):
    write_csv(tmp_path / "log.csv", make_rows(500))
    out = prepare(spec_file(tmp_path, "log.csv"))
    pipeline = FeaturePipeline.load(out)
    sparse, dense = pipeline.transform_records([
        {"user": "u3", "item": "never-seen", "slot": 2, "age": 45, "price": 12.0},
        {"user": None, "slot": None, "age": None},  # everything missing
    ])
    assert sparse.dtype == np.int32 and sparse.shape == (2, 4) and dense.shape == (2, 1)
    assert sparse[0, 0] > 0 and sparse[0, 1] == 0 and sparse[0, 2] == 3 and sparse[0, 3] == 3
    assert (sparse[1] == 0).all() and dense[1, 0] == 0.0
    # the same rows through prepare's path give the same ids
    table = pq.read_table(out / "train.parquet")
    assert table.schema.field("user_id").type == pa.int32()


def test_spec_errors_name_file_and_key(tmp_path):
    write_csv(tmp_path / "log.csv", make_rows(100))
    bad = spec_file(tmp_path, "log.csv", features=[{**FEATURES[0], "transformation": {"kind": "standardize"}}])
    with pytest.raises(ConfigError, match="a categorical feature takes a transformation of kind vocab, identity, bucketize"):
        prepare(bad)
    with pytest.raises(DataError, match="input.path: no input files"):
        prepare(spec_file(tmp_path, "missing.csv"))
    missing_column = spec_file(tmp_path, "log.csv", labels={"click": "clicked"})
    with pytest.raises(DataError, match="no label column clicked|no column clicked"):
        prepare(missing_column)
