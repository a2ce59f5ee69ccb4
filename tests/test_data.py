"""Synthetic funnel, dataset directory and batches."""

import numpy as np
import pytest
import torch

from recsmith.config.schema import DataConfig, SyntheticFunnelConfig
from recsmith.data.batches import TrainStream, load_split
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.data.synthetic import FIELDS, SyntheticFunnel
from recsmith.errors import DataError
from recsmith.metrics import auc


@pytest.fixture(scope="module")
def funnel_chunk():
    knobs = SyntheticFunnelConfig(rows=200_000, click_rate=0.08, conversion_rate=0.15)
    return knobs, SyntheticFunnel(knobs, seed=11).chunk(0, 200_000)


def test_rates_hit_their_targets_and_conversions_follow_clicks(funnel_chunk):
    knobs, c = funnel_chunk
    click, conversion = c["click"].astype(bool), c["conversion"].astype(bool)
    assert click.mean() == pytest.approx(knobs.click_rate, rel=0.05)
    assert conversion[click].mean() == pytest.approx(knobs.conversion_rate, rel=0.08)
    assert not (conversion & ~click).any()
    assert np.array_equal(conversion, click & c["conversion_if_clicked"].astype(bool))
    assert c["true_ctr"].mean() == pytest.approx(knobs.click_rate, rel=0.05)


def test_truth_explains_labels_better_than_chance(funnel_chunk):
    _, c = funnel_chunk
    clicked = c["click"] > 0
    assert 0.70 < auc(c["click"], c["true_ctr"]) < 0.95
    assert 0.65 < auc(c["conversion"][clicked], c["true_cvr"][clicked]) < 0.95
    assert auc(c["conversion_if_clicked"], c["true_cvr"]) > 0.7


def test_ids_are_encoded_in_vocab_with_zipf_popularity(funnel_chunk):
    _, c = funnel_chunk
    for spec in FIELDS:
        ids = c[spec.name]
        assert ids.min() >= 1 and ids.max() <= spec.vocab, spec.name  # 0 is reserved for unknown
    counts = np.sort(np.bincount(c["user_id"]))[::-1]
    assert counts[0] > 50 * np.median(counts[counts > 0])  # a heavy head, a long tail


def test_selection_bias_knob_controls_click_conversion_dependence():
    def corr(bias):
        knobs = SyntheticFunnelConfig(rows=50_000, selection_bias=bias, task_correlation=0.0)
        c = SyntheticFunnel(knobs, seed=3).chunk(0, 50_000)
        logit = lambda p: np.log(p / (1 - p))
        return np.corrcoef(logit(c["true_ctr"]), logit(c["true_cvr"]))[0, 1]

    assert abs(corr(0.0)) < 0.1
    assert corr(1.5) > 0.6
    assert corr(-1.5) < -0.6


def test_generation_is_deterministic_and_seed_dependent():
    knobs = SyntheticFunnelConfig(rows=5_000)
    a, b = SyntheticFunnel(knobs, 5).chunk(0, 5_000), SyntheticFunnel(knobs, 5).chunk(0, 5_000)
    c = SyntheticFunnel(knobs, 6).chunk(0, 5_000)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["user_id"], c["user_id"])


def test_prepared_directory_round_trips(tmp_path):
    data_cfg = DataConfig(synthetic=SyntheticFunnelConfig(rows=20_000), seed=1)
    path = resolve_dataset(data_cfg)
    assert resolve_dataset(data_cfg) == path  # cached
    schema = DatasetSchema.load(path)
    assert len(schema.sparse) == 26 and schema.user_field == "user_id"
    assert sum(schema.split_rows.values()) == 20_000
    train = load_split(path, schema, "train")
    assert train.sparse.dtype == torch.int32 and train.sparse.is_contiguous()
    assert train.sparse.shape == (schema.split_rows["train"], 26)
    assert set(train.labels) == {"click", "conversion"}
    assert {"true_ctr", "true_cvr", "conversion_if_clicked", "user"} <= set(train.columns)
    with pytest.raises(DataError, match="not a prepared dataset"):
        DatasetSchema.load(tmp_path)


def toy_split(n=1000):
    from recsmith.data.batches import SplitData

    return SplitData(torch.arange(n, dtype=torch.int32)[:, None], torch.zeros(n, 1),
                     {"click": (torch.arange(n) % 10 == 0).float()}, {}, {})


def test_each_epoch_is_a_fresh_permutation_and_positions_resume():
    stream = TrainStream(toy_split(1000), batch_size=100, seed=3)
    it = iter(stream)
    epoch0 = torch.cat([next(it).sparse[:, 0] for _ in range(10)])
    epoch1 = torch.cat([next(it).sparse[:, 0] for _ in range(10)])
    assert sorted(epoch0.tolist()) == list(range(1000)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    for _ in range(3):
        next(it)
    state = stream.state()
    expected = [next(it).sparse for _ in range(12)]
    again = TrainStream(toy_split(1000), batch_size=100, seed=3)
    again.load_state(state)
    resumed = iter(again)
    assert all(torch.equal(e, next(resumed).sparse) for e in expected)


def test_negative_downsampling_keeps_every_positive():
    stream = TrainStream(toy_split(1000), batch_size=10, seed=0, keep_negatives=0.25)
    order = stream.epoch_order(0)
    kept = order.numpy()
    assert set(range(0, 1000, 10)) <= set(kept.tolist())
    assert 0.15 < (len(kept) - 100) / 900 < 0.35


def test_a_split_smaller_than_a_batch_is_an_error():
    with pytest.raises(DataError, match="fewer than one batch"):
        TrainStream(toy_split(50), batch_size=100, seed=0)


def _rewrite(path, column, values):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    index = table.column_names.index(column)
    pq.write_table(table.set_column(index, column, pa.array(values, table.schema.field(column).type)), path)


@pytest.mark.parametrize("column, make_bad, message", [
    ("item_price", lambda v: np.where(np.arange(len(v)) < 3, np.nan, v), "dense field 'item_price' has 3 NaN"),
    ("click", lambda v: np.full(len(v), 2), "label 'click' has values other than 0 and 1"),
    ("conversion", lambda v: np.ones(len(v)), "rows have conversion = 1 where click = 0"),
    ("item_id", lambda v: v + 10**6, "field 'item_id' has ids outside"),
])
def test_malformed_data_is_rejected_with_its_path(tmp_path, column, make_bad, message):
    import shutil

    import pyarrow.parquet as pq

    source = resolve_dataset(DataConfig(synthetic=SyntheticFunnelConfig(rows=5_000), seed=2))
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    values = pq.read_table(broken / "valid.parquet").column(column).to_numpy()
    _rewrite(broken / "valid.parquet", column, make_bad(values))
    schema = DatasetSchema.load(broken)
    with pytest.raises(DataError, match=message) as info:
        load_split(broken, schema, "valid")
    assert "valid.parquet" in str(info.value)


def test_data_prepare_and_info_commands_report_the_oracle(tmp_path):
    from conftest import REPO, run_cli

    base = REPO / "configs" / "base" / "mtl_funnel.yaml"
    result = run_cli("data", "prepare", base, "--set", "data.synthetic.rows=20000")
    assert result.returncode == 0, result.stderr
    assert "synthetic_funnel" in result.stdout and "oracle AUC: ctr" in result.stdout
    assert "26 sparse fields" in result.stdout
    missing = run_cli("data", "info", tmp_path)
    assert missing.returncode == 2 and "not a prepared dataset" in missing.stderr
