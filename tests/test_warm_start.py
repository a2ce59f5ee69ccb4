"""Model updates: vocabularies extended at prepare time, weights carried over by --init-from."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from conftest import run_cli
from test_table_source import FEATURES, make_rows, spec_file, write_csv

from recsmith.config.loader import load_experiment
from recsmith.config.schema import DataConfig
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.errors import ConfigError
from recsmith.features.definitions import FeatureSpec
from recsmith.features.encoders import build_encoder
from recsmith.features.pipeline import FeaturePipeline
from recsmith.models.ranking import build_model
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.run import train_run
from recsmith.train.warm_start import configure, warm_start

# quantile buckets fitted on day 1: an update must keep them
AGE_QUANTILES = {"name": "age_q", "type": "categorical", "entity": "user", "source": "age",
                 "transformation": {"kind": "bucketize", "num_buckets": 4}}
DAY_FEATURES = FEATURES + [AGE_QUANTILES]


def day_rows(day: int) -> dict:
    """Day 1: users u0..u49, items i*. Day 2: the same kind of traffic, a third of it from
    users and items never seen on day 1, and higher prices."""
    rows = make_rows(1500, seed=day)
    if day == 2:
        rng = np.random.default_rng(7)
        for i in np.flatnonzero(rng.random(1500) < 0.35):
            rows["user"][i] = f"new_u{rng.integers(0, 20)}"
        for i in np.flatnonzero(rng.random(1500) < 0.35):
            rows["item"][i] = f"new_i{rng.integers(0, 30)}"
        rows["price"] = [round(p * 3, 2) for p in rows["price"]]
    return rows


def write_day(root, day: int, features=DAY_FEATURES):
    folder = root / f"day{day}"
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "log.csv", day_rows(day))
    return spec_file(folder, folder / "log.csv", features=features)


def experiment_file(root, spec, name: str):
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "data": {"source": "table", "path": str(spec), "batch_size": 128, "eval_batch_size": 1024},
        "embedding": {"default_embedding_dim": 4},
        "model": {"deep_hidden_dims": [16], "tower_hidden_dims": [8], "fm_projection_dim": 4},
        "lr_scheduler": {"total_steps": 6},
        "runtime": {"max_train_steps": 6, "eval_every_steps": 3, "log_every_steps": 3, "device": "cpu",
                    "num_threads": 1, "best_selection": {"primary_key": "auc_ctr"}},
    }))
    return path


@pytest.fixture(scope="module")
def day1(tmp_path_factory):
    """Day 1 prepared and trained for a few steps: (root, run dir, its dataset dir)."""
    root = tmp_path_factory.mktemp("updates")
    config = experiment_file(root, write_day(root, 1), "day1")
    result = train_run(load_experiment(config), root / "run1")
    return root, root / "run1", Path(result["dataset"])


@pytest.fixture(scope="module")
def day2(day1):
    """Day 2's dataset spec (written once: its file's time is part of the cache key)."""
    return write_day(day1[0], 2)


def prepare(spec, base=None):
    return resolve_dataset(DataConfig(source="table", path=str(spec), max_bad_rows=0.01,
                                      extend_vocab_from=str(base) if base else None))


def vocab(directory):
    return json.loads((directory / "vocab.json").read_text())


def test_vocab_extension_appends_new_values_and_caps_only_them():
    spec = FeatureSpec.model_validate({"name": "x", "type": "categorical",
                                       "transformation": {"kind": "vocab", "min_count": 2, "max_size": 2}})
    encoder = build_encoder(spec, {"values": ["b", "a"]})
    encoder.fit(pa.array(["c", "c", "d", "d", "d", "a", "e", "f", "f", "f", "f"]))
    encoder.finish()
    # known values at their ids whatever their count now; new ones by count, at most max_size; e (once) dropped
    assert encoder.state() == {"values": ["b", "a", "f", "d"]}
    assert encoder.transform(pa.array(["a", "b", "f", "d", "c", None])).tolist() == [2, 1, 3, 4, 0, 0]
    fresh = build_encoder(spec)
    fresh.fit(pa.array(["c", "c", "d", "d", "d", "a", "e", "f", "f", "f", "f"]))
    fresh.finish()
    assert fresh.state() == {"values": ["f", "d"]}  # without a base: max_size caps the whole vocabulary


def test_prepare_with_a_base_keeps_known_ids_and_fitted_statistics(day1, day2):
    root, _, base = day1
    spec2 = day2
    plain, extended = prepare(spec2), prepare(spec2, base)
    assert extended != plain and extended != base  # cached apart
    old, new, alone = vocab(base), vocab(extended), vocab(plain)
    for name in ("user_id", "item_id"):
        known = old[name]["values"]
        assert new[name]["values"][: len(known)] == known
        # appended: day 2's values (its training split, min_count, most frequent first) not known before
        added = new[name]["values"][len(known):]
        assert added == [v for v in alone[name]["values"] if v not in set(known)]
        assert sum(v.startswith("new_") for v in added) >= 15
        assert alone[name]["values"][: len(known)] != known  # refitted alone, the ids would move
    for name in ("age_q", "age_bucket", "price", "slot"):
        assert new[name] == old[name]  # quantiles, standardisation: as day 1 fitted them
    assert alone["price"]["offset"] != old["price"]["offset"]  # refitted alone, the inputs would shift
    schema = DatasetSchema.load(extended)
    sizes = {f.name: f.vocab_size for f in schema.sparse}
    assert sizes["user_id"] == len(new["user_id"]["values"]) + 1 and schema.meta["extends_vocab_of"] == str(base)
    # the same raw value gets the same id from the day-1 and the day-2 encoders
    records = [{"user": "u3", "item": "i1", "slot": 1, "age": 40, "price": 9.0},
               {"user": "new_u5", "item": "new_i3", "slot": 1, "age": 40, "price": 9.0}]
    before, _ = FeaturePipeline.load(base).transform_records(records)
    after, dense = FeaturePipeline.load(extended).transform_records(records)
    assert (before[0] == after[0]).all() and before[1, 0] == 0 and after[1, 0] > len(old["user_id"]["values"])
    assert np.allclose(dense, FeaturePipeline.load(base).transform_records(records)[1])


def test_a_changed_feature_definition_is_named(day1):
    root, _, base = day1
    changed = [dict(f) for f in DAY_FEATURES]
    changed[1] = {**changed[1], "transformation": {"kind": "vocab", "min_count": 3}}
    changed[0] = {**changed[0], "owner": "someone else"}  # descriptive: allowed to change
    with pytest.raises(ConfigError, match=r"definitions differ .*item_id\.transformation .*'min_count': 2.*"
                                          r"'min_count': 3") as info:
        prepare(write_day(root / "x", 2, changed), base)
    assert "user_id" not in str(info.value)
    with pytest.raises(ConfigError, match="new features region; missing features age_q"):
        prepare(write_day(root / "y", 2, FEATURES + [{**AGE_QUANTILES, "name": "region"}]), base)
    with pytest.raises(ConfigError, match="'synthetic' source cannot extend vocabularies"):
        resolve_dataset(DataConfig(extend_vocab_from=str(base)))


def test_warm_start_copies_known_rows_and_leaves_new_rows_fresh(day1, day2):
    root, run1, base = day1
    config = experiment_file(root, day2, "day2")
    cfg = configure(load_experiment(config, {"runtime.init_from": str(run1)}))
    assert cfg.data.extend_vocab_from == str(base)
    dataset = resolve_dataset(cfg.data)
    before, after = DatasetSchema.load(base), DatasetSchema.load(dataset)
    model = build_model(after, cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    done = warm_start(model, run1, dataset)
    old = load_checkpoint(run1 / "ckpt_best.pt")
    assert done["step"] == old["step"] == json.loads((run1 / "eval.json").read_text())["best_step"]

    table, old_table, fresh_table = (s["embedding.table.weight"] for s in (model.state_dict(), old["model"], fresh))
    assert table.shape[1] == 5  # 4 dims + the first-order weight, carried in the same rows
    old_offset = new_offset = 0
    new_rows = []
    for was, now in zip(before.sparse, after.sparse):
        assert now.vocab_size >= was.vocab_size
        kept = slice(new_offset, new_offset + was.vocab_size)
        assert torch.equal(table[kept], old_table[old_offset:old_offset + was.vocab_size]), now.name
        assert not torch.equal(table[kept], fresh_table[kept]), now.name  # trained rows, not a fresh draw
        added = slice(new_offset + was.vocab_size, new_offset + now.vocab_size)
        assert torch.equal(table[added], fresh_table[added]), now.name
        new_rows.append(table[added])
        old_offset, new_offset = old_offset + was.vocab_size, new_offset + now.vocab_size
    new_rows = torch.cat(new_rows)
    assert len(new_rows) == done["embedding_rows_new"] > 20
    # fresh rows are none of the old rows
    assert not (new_rows[:, None, :4] == old_table[None, :, :4]).all(-1).any()
    for name, value in model.state_dict().items():
        if name != "embedding.table.weight":
            assert torch.equal(value, old["model"][name]), name
    assert not torch.equal(fresh["towers.ctr.logit.weight"], old["model"]["towers.ctr.logit.weight"])

    other = load_experiment(config, {"runtime.init_from": str(run1), "model.deep_hidden_dims": [8]})
    with pytest.raises(ConfigError, match=r"different architecture\): backbone\.\S+ \(16, \d+\) → \(8, \d+\)"):
        warm_start(build_model(after, other), run1, dataset)
    with pytest.raises(ConfigError, match="encodes user_id, item_id.* differently .* data.extend_vocab_from="):
        warm_start(model, run1, prepare(day2))  # day 2 prepared alone: ids moved


def test_cli_init_from_trains_records_and_resumes(day1, day2):
    root, run1, base = day1
    config = experiment_file(root, day2, "day2")
    run2 = root / "run2"
    done = run_cli("train", config, "--run-dir", run2, "--init-from", run1)
    assert done.returncode == 0, done.stderr
    result = json.loads((run2 / "eval.json").read_text())
    first = json.loads((run1 / "eval.json").read_text())
    assert result["init_from"] == {"run": str(run1.resolve()), "step": first["best_step"], "dataset": str(base)}
    assert result["dataset"] != str(base)
    saved = yaml.safe_load((run2 / "config.yaml").read_text())
    assert saved["runtime"]["init_from"] == str(run1.resolve()) and saved["data"]["extend_vocab_from"] == str(base)
    assert f"init_from {run1.resolve()} (its best step {first['best_step']})" in (run2 / "train.log").read_text()

    (run2 / "eval.json").unlink()  # as if stopped after its last checkpoint
    resumed = run_cli("train", config, "--run-dir", run2, "--resume", "--init-from", run1)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from ckpt_last.pt at step 6" in (run2 / "train.log").read_text()
    assert json.loads((run2 / "eval.json").read_text())["init_from"] == result["init_from"]
    (run2 / "eval.json").unlink()  # the run's own config.yaml resumes it too
    assert train_run(load_experiment(run2 / "config.yaml"), run2, resume=True)["init_from"] == result["init_from"]
    (run2 / "eval.json").unlink()
    with pytest.raises(ConfigError, match=r"\(data.extend_vocab_from: '.+' → None, runtime.init_from: '.+' → None\); "
                                          r"resume with the same"):
        train_run(load_experiment(config), run2, resume=True)  # --init-from forgotten
    with pytest.raises(ConfigError, match="runtime.init_from: .*nowhere is not a finished run"):
        train_run(load_experiment(config, {"runtime.init_from": str(root / "nowhere")}), root / "run3")
    assert not (root / "run3").exists()
    help_text = run_cli("train", "--help").stdout
    assert "--init-from" in help_text and "Warm-start" in help_text
