"""Sequence data: leave-last-out by time, what a prediction may see (the leakage test),
the explicit features against a brute-force reference, the ML-1M reader on a fixture in
its `::` format, and the top-K metric functions against a direct computation."""

import gzip

import numpy as np
import pytest
import torch

from recsmith.config.schema import DataConfig
from recsmith.data.sequence_dataset import SequenceDataset
from recsmith.data.sequences import build_log, histories, train_windows
from recsmith.data.sources import resolve_dataset
from recsmith.errors import DataError
from recsmith.metrics.ranking import target_ranks, topk_metrics
from test_movielens import ML1M, ML100K, needs_ml100k


@pytest.fixture(scope="module")
def ml100k_seq():
    cfg = DataConfig(source="movielens_100k", path=str(ML100K), options={"view": "sequence"})
    return SequenceDataset.load(resolve_dataset(cfg))


@needs_ml100k
def test_leave_last_out_by_time(ml100k_seq):
    log = ml100k_seq.log
    assert len(log) == 100_000 and log.num_users == 943 and log.num_items == 1682
    for u in (1, 200, 943):
        lo, hi = log.user_start[u], log.user_start[u + 1]
        assert (np.diff(log.ts[lo:hi]) >= 0).all()  # time-ordered
        assert list(log.split[hi - 3:hi]) == [0, 1, 2]  # ..., train, valid (second-to-last), test (last)
    assert (log.split == 2).sum() == 943 and (log.split == 1).sum() == 943
    assert ml100k_seq.schema.split_rows["test"] == 943 * 5  # true item + 4 never-rated per target


def visible_ts_before_target(log, events, max_length):
    items, lengths, _ = histories(log, events, max_length)
    end = log.prefix_end[events]
    for n, e in enumerate(events):
        seen = np.arange(end[n] - lengths[n], end[n])
        assert (log.user[seen] == log.user[e]).all()
        assert (log.item[seen] == items[n, :lengths[n]]).all()
        if len(seen) and log.ts[seen].max() >= log.ts[e]:
            return False
    return True


@needs_ml100k
def test_no_prediction_sees_an_interaction_at_or_after_its_target(ml100k_seq):
    """The leakage test: every training window position, every candidate row's history and
    every explicit feature uses only interactions strictly before the target's timestamp."""
    log, rng = ml100k_seq.log, np.random.default_rng(0)
    # training windows: the position predicting a target holds only earlier-timestamped items
    windows = train_windows(log, 50)
    has = windows.targets > 0
    assert has.sum() > 90_000
    rows, cols = np.nonzero(has)
    target = windows.events[rows, cols]
    for r, c, e in zip(rows, cols, target):
        seen = windows.events[r, :windows.source[r, c] + 1]
        assert (log.user[seen] == log.user[e]).all() and log.ts[seen].max() < log.ts[e]
    # candidate rows' histories (train, valid and test targets)
    for split in ("train", "valid", "test"):
        events = np.unique(ml100k_seq.candidates(split, ["event"])["event"])
        assert visible_ts_before_target(log, rng.choice(events, min(2000, len(events)), replace=False), 50)


@needs_ml100k
def test_features_match_a_reference_that_sees_only_the_past(ml100k_seq):
    """Explicit features recomputed from scratch using only interactions with ts < target."""
    log = ml100k_seq.log
    rows = ml100k_seq.candidates("train")
    rng = np.random.default_rng(1)
    for n in rng.choice(len(rows["event"]), 60, replace=False):
        e, item = rows["event"][n], rows["item_id"][n]
        t, u = log.ts[e], log.user[e]
        past = log.ts < t
        mine = past & (log.user == u)
        assert rows["item_pop"][n] == (past & (log.item == item)).sum()
        assert rows["item_pop_30d"][n] == (past & (log.item == item) & (log.ts >= t - 30 * 86400)).sum()
        assert rows["hist_len"][n] == mine.sum()
        assert rows["hist_mean_rating"][n] == pytest.approx(log.rating[mine].mean(), rel=1e-5)
        rated = past & (log.item == item)
        if rated.any():
            assert rows["item_mean_rating"][n] == pytest.approx(log.rating[rated].mean(), rel=1e-5)
        assert rows["days_since_last"][n] == pytest.approx((t - log.ts[mine].max()) / 86400, rel=1e-4)


def test_a_feature_using_the_target_time_would_be_caught():
    """The check above fails on a history that includes a same-second interaction."""
    user = np.array([1, 1, 1, 1, 1])
    ts = np.array([10, 20, 20, 30, 40])
    common = dict(user_raw=user, item_raw=np.arange(1, 6), ts=ts, rating=np.full(5, 4), line=np.arange(5),
                  item_ids=np.arange(1, 6))
    strict, _, _ = build_log(history="strict_time", **common)
    order, _, _ = build_log(history="order", **common)
    assert visible_ts_before_target(strict, np.array([2]), 10)
    assert not visible_ts_before_target(order, np.array([2]), 10)  # sees item 2, rated the same second
    windows = train_windows(strict, 10)  # train events 0..2: event 2 is predicted from event 0 only
    assert windows.targets.tolist()[0][:3] == [0, 2, 3] and windows.source[0, 2] == 0


def test_leave_last_out_needs_three_interactions():
    with pytest.raises(DataError, match="≥ 3 interactions"):
        build_log(np.array([1, 1]), np.array([1, 2]), np.array([1, 2]), np.array([4, 4]), np.arange(2),
                  np.array([1, 2]), "strict_time")


@pytest.mark.skipif(not (ML1M / "movies.dat.gz").is_file(), reason="../shared/data/ml-1m is absent")
def test_ml1m_reader_builds_the_sequence_view_from_its_dat_format(tmp_path, monkeypatch):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    for name in ("movies.dat", "users.dat"):
        (folder / name).write_bytes(gzip.decompress((ML1M / f"{name}.gz").read_bytes()))
    rng = np.random.default_rng(3)
    lines = []
    for user in range(1, 41):
        for k, movie in enumerate(rng.choice([1, 2, 3, 5, 10, 32, 50, 110, 260, 296, 318, 593], 8, replace=False)):
            lines.append(f"{user}::{movie}::{rng.integers(1, 6)}::{978300000 + 60 * k + user}")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    monkeypatch.setenv("RECSMITH_CACHE", str(tmp_path / "cache"))
    data = SequenceDataset.load(resolve_dataset(DataConfig(source="movielens_1m", path=str(folder),
                                                           options={"view": "sequence"})))
    assert len(data.log) == 320 and data.log.num_users == 40
    assert data.log.num_items == 3883  # the catalogue is movies.dat, rated or not
    assert (data.log.split == 2).sum() == 40
    genres = data.candidates("test", ["genre", "genre_count"])
    assert genres["genre_count"].max() >= 2 and genres["genre"].min() >= 1


def test_topk_metrics_against_a_direct_computation():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.normal(size=(200, 30)))
    scores[:5] = 0.0  # all tied: the expected rank under a random tie break
    target = torch.from_numpy(rng.integers(0, 30, 200))
    ranks = target_ranks(scores, target).numpy()
    for n in range(5, 200):
        assert ranks[n] == 1 + (scores[n] > scores[n, target[n]]).sum().item()
    assert (ranks[:5] == 15.5).all()
    metrics = topk_metrics(ranks, [5, 10])
    hits = ranks <= 10
    assert metrics["hr_10"] == pytest.approx(hits.mean())
    assert metrics["ndcg_10"] == pytest.approx(np.mean([1 / np.log2(r + 1) if r <= 10 else 0 for r in ranks]))
    assert metrics["precision_10"] == pytest.approx(hits.mean() / 10)
    assert metrics["mrr"] == pytest.approx(np.mean(1 / ranks))
    excluded = torch.zeros(200, 30, dtype=torch.bool)
    excluded[:, :] = scores > scores.gather(1, target.view(-1, 1))  # exclude everything ranked above
    assert (target_ranks(scores[5:], target[5:], excluded[5:]) == 1).all()
