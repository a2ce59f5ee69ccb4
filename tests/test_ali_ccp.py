"""Ali-CCP source: raw files in the official packed format, joined with their common
features, checked against a plain-Python reference parser."""

import gzip
import hashlib
import json
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recsmith.data.sources.ali_ccp as ali_ccp  # registers data.source: ali_ccp
from recsmith.config.schema import DataConfig
from recsmith.data.batches import load_split
from recsmith.data.prepare import LINE, SPLIT, Chunk, SplitRule, assign_splits
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.errors import ConfigError, DataError

ALL_FIELDS = list(ali_ccp.FIELDS)
SEED = DataConfig().seed


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


def pack(features):
    return "\x01".join(f"{field}\x02{fid}\x03{value}" for field, fid, value in features)


def common_features(rng, user):
    """User-side features; the behaviour fields hold several values, with ties."""
    features = [("101", 10_000 + user, "1.0")]
    features += [(f, 100 * int(f) + int(rng.integers(0, 4)), "1.0") for f in ("121", "122", "124", "125", "126")]
    for field in ("109_14", "110_14", "150_14"):
        for _ in range(int(rng.integers(0, 4))):
            features.append((field, 5000 + int(rng.integers(0, 6)), rng.choice(["0.693", "1.099", "1.386"])))
    return features


def sample_features(rng):
    """Item and context features: 210 and 508 repeat; some samples also carry 124 themselves."""
    features = [("205", 20_000 + int(rng.zipf(1.6) % 40), "1.0"), ("206", 30_000 + int(rng.integers(0, 5)), "1.0"),
                ("216", 40_000 + int(rng.integers(0, 8)), "1.0")]
    for field in ("210", "508"):
        for _ in range(int(rng.integers(0, 3))):
            features.append((field, 50_000 + int(rng.integers(0, 9)), str(rng.choice([0.5, 1.0, 2.0]))))
    if rng.random() < 0.1:
        features.append(("124", 99_999, "1.0"))  # the sample's own value beats the common one
    features.append(("301", 1 + int(rng.integers(0, 3)), "1.0"))
    return features


def skeleton_line(sample_id, click, conversion, key, features):
    return f"{sample_id},{click},{conversion},{key},{len(features)},{pack(features)}"


def write_raw(folder, seed=0):
    """Four raw files with malformed lines at known places; returns what a correct
    reader must produce: the good samples' features, and the expected rejects."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected_rejects = []
    samples = {}
    for split, users, n in (("train", range(0, 40), 700), ("test", range(30, 45), 250)):
        common = {md5(f"{split}-{u}"): common_features(rng, u) for u in users}
        lines = [f"{k},{len(f)},{pack(f)}" for k, f in common.items()]
        keys = list(common)
        if split == "train":  # a repeated index (its features must be ignored) and a broken one
            lines[5:5] = [f"{keys[1]},1,{pack([('101', 1, '1.0')])}", f"zz,1,{pack([('101', 2, '1.0')])}"]
            expected_rejects += [("common_features_train.csv", 6, "common_feature_index repeats line 2"),
                                 ("common_features_train.csv", 7, "common_feature_index: 'zz' is not an md5")]
        (folder / f"common_features_{split}.csv").write_text("\n".join(lines) + "\n")

        good, entries = [], []  # entries: (line, reject reason or None)
        for i in range(n):
            click = int(rng.random() < 0.3)
            conversion = int(click and rng.random() < 0.3)
            key = keys[int(rng.integers(0, len(keys)))]
            own = sample_features(rng)
            entries.append((skeleton_line(i + 1, click, conversion, key, own), None))
            good.append((own, common[key], click, conversion))
        if split == "train":
            k, item = keys[0], pack([("205", 1, "1.0")])
            bad = [
                (f"1001,1,0,{k},1", "expected 6 comma-separated fields, found 5"),
                (f"1002,x,0,{k},1,{item}", "click: 'x' is not a number"),
                (f"1003,1,0,{k},2,{item}\x01206\x02200", "feature_list item 2: '206\\x02200' is not field_id"),
                (f"1004,0,1,{k},1,{item}", "conversion = 1 where click = 0"),
                (f"1005,1,0,{md5('nobody')},1,{item}", f"common_feature_index {md5('nobody')} has no common features"),
                (f"1006,1,0,nothex,1,{item}", "common_feature_index: 'nothex' is not an md5 (32 hex digits)"),
                (f"1007,1,0,{k},3,{item}\x01{item}", "feature_num is 3 but feature_list holds 2 features"),
                (f"abc,1,0,{k},1,{item}", "sample_id: 'abc' is not an integer"),
                (f"1008,2,0,{k},1,{item}", "label click: 2 is not 0 or 1"),
                (f"1009,1,1,{k},1,205\x021\x03high", "feature_list item 1: '205\\x021\\x03high' is not field_id"),
            ]
            for position, entry in zip([10, 11, 120, 121, 300, 301, 302, 450, 600, 601], bad):
                entries.insert(position, entry)
            entries.insert(200, ("", None))  # a blank line: skipped, but it has a number
            expected_rejects += [("sample_skeleton_train.csv", i + 1, reason)
                                 for i, (_, reason) in enumerate(entries) if reason]
        lines = [line for line, _ in entries]
        numbers = np.array([i + 1 for i, (line, reason) in enumerate(entries) if line and not reason])
        (folder / f"sample_skeleton_{split}.csv").write_text("\n".join(lines) + "\n")
        samples[split] = (good, numbers)
    return samples, sorted(expected_rejects)


def choose(own, common, field):
    """Reference rule: the sample's own occurrences if any, else the common ones; the
    largest value wins, the first on a tie."""
    candidates = [(fid, float(v)) for f, fid, v in own if f == field] or \
                 [(fid, float(v)) for f, fid, v in common if f == field]
    if not candidates:
        return None
    best = max(v for _, v in candidates)
    return str(next(fid for fid, v in candidates if v == best))


def reference(samples, fields, min_count=1, valid_fraction=0.1):
    """Expected rows per split (tuples of raw feature ids, click, conversion) and vocabularies."""
    rows = {"train": [], "valid": [], "test": []}
    for split, (good, numbers) in samples.items():
        table = pa.table({LINE: pa.array(numbers, pa.int64()), SPLIT: [split] * len(numbers)})
        codes = assign_splits(Chunk(table, f"sample_skeleton_{split}.csv"), table,
                              SplitRule(kind="provided", valid_fraction=valid_fraction, seed=SEED))
        for (own, common, click, conversion), code in zip(good, codes):
            rows[("train", "valid", "test")[code]].append(
                tuple(choose(own, common, f) for f in fields) + (click, conversion))
    vocab = {}
    for k, field in enumerate(fields):
        counts = Counter(row[k] for row in rows["train"] if row[k] is not None)
        vocab[field] = {v for v, c in counts.items() if c >= min_count}
    expected = {split: sorted((tuple(v if v in vocab[f] else None for f, v in zip(fields, row[:-2])) + row[-2:]
                               for row in split_rows), key=repr) for split, split_rows in rows.items()}
    return expected, vocab


def decoded(out, fields):
    """The prepared splits decoded back to raw feature ids through vocab.json."""
    vocab = json.loads((out / "vocab.json").read_text())
    result = {}
    for split in ("train", "valid", "test"):
        table = pq.read_table(out / f"{split}.parquet")
        columns = [[None if i == 0 else vocab[f"f{f}"]["values"][i - 1] for i in table[f"f{f}"].to_pylist()]
                   for f in fields]
        labels = [table["click"].to_pylist(), table["conversion"].to_pylist()]
        result[split] = sorted(zip(*columns, *labels), key=repr)
    return result


def prepare(folder, max_bad_rows=0.05, progress=None, **options):
    cfg = DataConfig(source="ali_ccp", path=str(folder) if folder else None, max_bad_rows=max_bad_rows,
                     options=options)
    return resolve_dataset(cfg, progress)


def read_rejects(out):
    return sorted((r["file"], r["line"], r["reason"]) for r in map(json.loads, (out / "rejects.jsonl").open()))


def test_prepares_joined_samples_like_the_reference(tmp_path):
    samples, expected_rejects = write_raw(tmp_path / "raw")
    calls = []
    out = prepare(tmp_path / "raw", progress=lambda done, total: calls.append((done, total)))
    schema = DatasetSchema.load(out)
    assert schema.sparse_names == [f"f{f}" for f in ALL_FIELDS] and schema.dense_names == []
    assert [(t.name, t.label, t.observed_when) for t in schema.tasks] == [("ctr", "click", None),
                                                                          ("cvr", "conversion", "click")]
    assert schema.user_field == "f101" and schema.labels == ["click", "conversion"]
    expected, vocab = reference(samples, ALL_FIELDS)
    assert schema.split_rows == {s: len(rows) for s, rows in expected.items()}
    assert schema.split_rows["train"] + schema.split_rows["valid"] == 700 and schema.split_rows["test"] == 250
    assert 40 <= schema.split_rows["valid"] <= 100
    assert {f.name: f.vocab_size for f in schema.sparse} == {f"f{f}": len(vocab[f]) + 1 for f in ALL_FIELDS}
    assert decoded(out, ALL_FIELDS) == expected
    # the joined common features are really there: every sample has a user id and a profile
    train = pq.read_table(out / "train.parquet")
    assert min(train["f101"].to_pylist()) > 0 and min(train["f121"].to_pylist()) > 0
    assert {f.name: f.entity for f in schema.sparse}["f101"] == "user"
    batches = load_split(out, schema, "valid")  # what training reads
    assert batches.sparse.shape == (schema.split_rows["valid"], 23)
    assert [f for f in ALL_FIELDS if schema.sparse[ALL_FIELDS.index(f)].vocab_size == 1] == \
        ["127_14", "127", "128", "129", "207", "509", "702", "853"]  # fields the fixture never writes
    # every malformed line, with its file, number and reason
    found = read_rejects(out)
    assert [(file, line) for file, line, _ in found] == [(file, line) for file, line, _ in expected_rejects]
    for (_, _, reason), (_, _, expected_reason) in zip(found, expected_rejects):
        assert expected_reason in reason
    assert schema.meta["rows_rejected"] == 12
    assert [done for done, _ in calls] == sorted(done for done, _ in calls) and calls[-1][0] == calls[-1][1]


def test_options_pick_fields_and_min_count(tmp_path, monkeypatch):
    samples, _ = write_raw(tmp_path / "data" / "ali-ccp", seed=1)
    monkeypatch.setenv("RECSMITH_DATA", str(tmp_path / "data"))  # found without data.path
    fields = ["101", "205", "109_14"]
    out = prepare(None, fields=[101, "205", "109_14"], min_count=3, valid_fraction=0.25)
    schema = DatasetSchema.load(out)
    assert schema.sparse_names == ["f101", "f205", "f109_14"]
    expected, vocab = reference(samples, fields, min_count=3, valid_fraction=0.25)
    assert {f.name: f.vocab_size for f in schema.sparse} == {f"f{f}": len(vocab[f]) + 1 for f in fields}
    assert schema.split_rows == {s: len(rows) for s, rows in expected.items()}
    assert decoded(out, fields) == expected


def test_small_blocks_and_gzip_give_the_same_dataset(tmp_path, monkeypatch):
    write_raw(tmp_path / "plain", seed=2)
    first = prepare(tmp_path / "plain")
    shutil.copytree(tmp_path / "plain", tmp_path / "zipped")
    for name in ("sample_skeleton_train.csv", "common_features_test.csv"):
        path = tmp_path / "zipped" / name
        with gzip.open(path.with_name(name + ".gz"), "wb") as handle:
            handle.write(path.read_bytes())
        path.unlink()
    monkeypatch.setattr(ali_ccp, "BLOCK_BYTES", 3000)  # ~20 lines per block
    monkeypatch.setenv("RECSMITH_CACHE", str(tmp_path / "cache"))
    second = prepare(tmp_path / "zipped")
    for split in ("train", "valid", "test"):
        assert pq.read_table(first / f"{split}.parquet").equals(pq.read_table(second / f"{split}.parquet"))
    assert read_rejects(first) == read_rejects(second)


@pytest.mark.parametrize("block_bytes", [1, 5, 64, 1 << 20])
def test_line_blocks_keep_physical_line_numbers(tmp_path, block_bytes):
    text = "a,1\r\n\nbb,2\n" + "x" * 300 + "\n   \nlast,line"  # CRLF, blank lines, a long line, no final newline
    path = tmp_path / "lines.csv"
    path.write_bytes(text.encode())
    blocks = list(ali_ccp.iter_line_blocks(path, block_bytes))
    lines = [line for block in blocks for line in block.lines.to_pylist()]
    numbers = [int(n) for block in blocks for n in block.numbers]
    assert lines == ["a,1", "bb,2", "x" * 300, "last,line"] and numbers == [1, 3, 4, 6]
    assert blocks[-1].position == len(text)


def test_too_many_bad_rows_fail_and_keep_the_rejects(tmp_path):
    write_raw(tmp_path / "raw")
    with pytest.raises(DataError, match=r"12 of 962 rows are malformed \(1.25%, more than --max-bad-rows 0.10%\)") \
            as info:
        prepare(tmp_path / "raw", max_bad_rows=0.001)
    assert len(open(str(info.value).split("see ")[-1]).read().splitlines()) == 12


def test_missing_data_says_where_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="data.path: the Ali-CCP folder not found at") as info:
        prepare(tmp_path / "nowhere")
    for words in ("Tianchi login", "https://tianchi.aliyun.com/dataset/408", "sample_skeleton_train.csv",
                  "common_features_test.csv"):
        assert words in str(info.value)
    monkeypatch.delenv("RECSMITH_DATA", raising=False)
    with pytest.raises(DataError, match="data.path: where is the Ali-CCP folder.*Tianchi login"):
        prepare(None)
    write_raw(tmp_path / "raw")
    (tmp_path / "raw" / "common_features_test.csv").unlink()
    with pytest.raises(DataError, match=r"raw: missing common_features_test.csv; Ali-CCP needs"):
        prepare(tmp_path / "raw")


def test_wrong_format_or_empty_files_are_one_error(tmp_path):
    write_raw(tmp_path / "raw")
    skeleton = tmp_path / "raw" / "sample_skeleton_test.csv"
    original = skeleton.read_text()
    skeleton.write_text("sample_id,click,conversion,common_feature_index,feature_num,feature_list\n" + original)
    with pytest.raises(DataError, match=r"sample_skeleton_test.csv: line 1 is not in the Ali-CCP format "
                                        r"\(sample_id: 'sample_id' is not an integer\); is this the right file"):
        prepare(tmp_path / "raw")
    skeleton.write_text(original.replace(",", "\t"))
    with pytest.raises(DataError, match=r"line 1 is not in the Ali-CCP format \(expected 6 comma-separated "
                                        r"fields, found 1\)"):
        prepare(tmp_path / "raw")
    skeleton.write_text("")
    with pytest.raises(DataError, match="sample_skeleton_test.csv: empty file"):
        prepare(tmp_path / "raw")


def test_option_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.options.min_cout: unknown key \(did you mean .min_count.\?\)"):
        prepare(tmp_path, min_cout=2)
    with pytest.raises(ConfigError, match=r"data.options.fields: unknown Ali-CCP field id '1010'.*did you mean '101'"):
        prepare(tmp_path, fields=["1010"])
    with pytest.raises(ConfigError, match="data.options.fields: field ids listed twice: 205"):
        prepare(tmp_path, fields=[205, "205"])
    with pytest.raises(ConfigError, match="data.options.valid_fraction: must be < 1.0, got 1.0"):
        prepare(tmp_path, valid_fraction=1.0)


def test_a_line_that_is_not_utf8_is_rejected(tmp_path):
    write_raw(tmp_path / "raw", seed=3)
    skeleton = tmp_path / "raw" / "sample_skeleton_test.csv"
    lines = skeleton.read_bytes().split(b"\n")
    lines[1] = b"\xff" + lines[1]
    skeleton.write_bytes(b"\n".join(lines))
    out = prepare(tmp_path / "raw")
    assert ("sample_skeleton_test.csv", 2, "not valid UTF-8") in read_rejects(out)
    assert DatasetSchema.load(out).split_rows["test"] == 249
