"""The online store (SQLite embedded, Redis): versioned switches, records, and online = offline:
the features of every test-split candidate row of MovieLens-100K rebuilt from the store as of
its event's time equal the prepared dataset's, exactly."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from recsmith.config.schema import DataConfig
from recsmith.data.seq_features import CATEGORICAL, NUMERIC
from recsmith.data.sequence_dataset import SequenceDataset
from recsmith.data.sources import resolve_dataset
from recsmith.errors import DataError
from recsmith.online.codec import pack, unpack
from recsmith.online.features import OnlineFeatures
from recsmith.online.materialize import POPULARITY, materialize
from recsmith.online.store import open_store
from test_movielens import ML100K, needs_ml100k


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        from conftest import redis_url

        opened = open_store(f"{redis_url()}?prefix=test{tmp_path.name}")
    yield opened
    opened.close()


def test_a_record_round_trips_and_garbage_is_refused():
    arrays = {"ts": np.array([3, 1, 2], np.int64), "flags": np.eye(2, dtype=np.float32), "r": np.array([5], np.int8)}
    got, values = unpack(pack(arrays, code=7, age=None, raw="u7"))
    assert values == {"code": 7, "age": None, "raw": "u7"}
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array)
    with pytest.raises(DataError, match="not a recsmith record"):
        unpack(b"\x05\x00\x00\x00hello")
    with pytest.raises(DataError, match="not a plain number type"):
        pack({"o": np.array(["a"], object)})


def test_a_version_is_seen_whole_once_committed_and_old_ones_go(store):
    with pytest.raises(DataError, match="is empty: run `recsmith features materialize"):
        store.get_many(["a"])
    first = store.new_version()
    store.put_many({"a": b"1", "b": b"2"}, first)
    assert store.current() is None  # written, not switched to
    store.commit(first, {"n": 1})
    assert store.get_many(["a", "b", "zz"]) == [b"1", b"2", None] and store.manifest() == {"n": 1}
    second = store.new_version()
    store.put_many({"a": b"10"}, second)
    assert store.get_many(["a"]) == [b"1"]  # readers see the old version until the switch
    store.commit(second, {"n": 2})
    assert store.get_many(["a", "b"]) == [b"10", None] and store.get_many(["a"], first) == [b"1"]
    third = store.new_version()
    store.commit(third, {"n": 3})
    assert store.get_many(["a"], first) == [None]  # two back: deleted
    store.put_many({"e": b"event"})  # events go into the current version
    assert store.get_many(["e"], third) == [b"event"]


def test_a_bad_store_uri_is_named():
    from recsmith.errors import ConfigError

    with pytest.raises(ConfigError, match="not a store URI"):
        open_store("mysql://x")


@needs_ml100k
def test_online_features_equal_the_offline_candidate_rows_exactly(store):
    """Every test-split candidate row (943 users × 5 candidates) rebuilt from the store."""
    dataset_dir = resolve_dataset(DataConfig(source="movielens_100k", path=str(ML100K),
                                             options={"view": "sequence", "history": "strict_time"}))
    manifest = materialize(dataset_dir, store, source="test")
    dataset = SequenceDataset.load(dataset_dir)
    assert manifest["users"] == 943 and manifest["items"] == 1682 and manifest["events"] == 100_000
    offline = pq.read_table(dataset_dir / "test.parquet").to_pydict()
    events = np.asarray(offline["event"])
    raw_users = dataset.raw_ids()["user_id"]
    online = OnlineFeatures(store)
    rebuilt = {name: [] for name in CATEGORICAL + NUMERIC}
    for event in np.unique(events):
        rows = np.flatnonzero(events == event)
        user = raw_users[dataset.log.user[event]]
        got = online.features(user, int(dataset.log.ts[event]), np.asarray(offline["item_id"])[rows])
        for name in rebuilt:
            rebuilt[name].append(got[name])
    order = np.argsort(events, kind="stable")
    for name, parts in rebuilt.items():
        expected = np.asarray(offline[name])[order]
        assert np.array_equal(np.concatenate(parts), expected, equal_nan=True), name


@needs_ml100k
def test_materialize_from_a_run_records_what_it_wrote(tmp_path):
    done = run_cli("train", "configs/base/ml100k_sequential.yaml", "--run-dir", tmp_path / "pop", "--set",
                   f"data.path={ML100K}", "--set", "model.sequential.architecture=most_popular")
    assert done.returncode == 0, done.stderr[-2000:]
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    done = run_cli("features", "materialize", tmp_path / "pop", "--store", uri)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "943 users, 1,682 items, 100,000 events" in done.stdout
    manifest = open_store(uri).manifest()
    assert manifest["source"] == str((tmp_path / "pop").resolve()) and manifest["history"] == "strict_time"
    missing = run_cli("features", "materialize", tmp_path / "nothing", "--store", uri)
    assert missing.returncode != 0 and "not a run dir" in missing.stderr


@needs_ml100k
def test_an_event_is_seen_by_the_next_request_as_if_it_had_been_logged(store):
    """After POSTing an event, a request's features equal the offline builder's on the log
    with that event appended (to float32 rounding: the history's log-popularity sum is a
    running sum, offline over the whole log); a repeated id changes nothing; an event older
    than the user's last is refused."""
    from recsmith.data.seq_features import FeatureBuilder, popularity
    from recsmith.data.sequences import build_log
    from recsmith.online.events import Event, apply_event

    dataset_dir = resolve_dataset(DataConfig(source="movielens_100k", path=str(ML100K),
                                             options={"view": "sequence", "history": "strict_time"}))
    materialize(dataset_dir, store)
    dataset = SequenceDataset.load(dataset_dir)
    log, raw = dataset.log, dataset.raw_ids()
    user = 7
    last = int(log.ts[log.user_start[user + 1] - 1])
    posted, probe = last + 3600, last + 7200
    item = 50  # any item; its popularity and mean rating change too
    event = Event(id="e1", user=raw["user_id"][user], item=raw["item_id"][item], ts=posted, rating=4)
    assert apply_event(store, event, item) is True
    assert apply_event(store, event, item) is False  # the same id again: nothing changes
    with pytest.raises(DataError, match="arrive in time order"):
        apply_event(store, Event(id="e0", user=event.user, item=event.item, ts=last - 1, rating=3), item)

    n = len(log)
    grown, _, _ = build_log(np.r_[log.user, user, user], np.r_[log.item, item, 1], np.r_[log.ts, posted, probe],
                            np.r_[log.rating, 4, 0], np.arange(n + 2), np.arange(1, log.num_items + 1), "strict_time")
    offline = FeatureBuilder(grown, dataset.feature_builder().attrs)
    target = int(np.flatnonzero((grown.user == user) & (grown.ts == probe))[0])
    candidates = np.array([item, 1, 181, 1682, item])
    expected = offline.features(np.full(len(candidates), target), candidates)
    got = OnlineFeatures(store).features(raw["user_id"][user], probe, candidates)
    assert got["hist_len"][0] == expected["hist_len"][0] == log.user_start[user + 1] - log.user_start[user] + 1
    keys = unpack(store.get_many([POPULARITY])[0])[0]["keys"]  # most-popular's counts include it too
    assert np.array_equal(popularity(keys, candidates, probe), offline.item_popularity(candidates, probe))
    for name in CATEGORICAL:
        assert np.array_equal(got[name], expected[name]), name
    for name in NUMERIC:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, equal_nan=True, err_msg=name)
