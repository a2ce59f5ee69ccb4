"""Feast's online stores against recsmith's thin store, on the same records and requests.

The records are what `recsmith features materialize` writes for a sequence run's dataset
(recsmith.online.materialize): per user the time-ordered history (item codes, times,
ratings, the history statistics' prefix sums) and the profile; per item its events' times
and ratings and its attributes. Feast gets the same columns as two feature views (user_id,
item_id entities) with array fields, materialized from Parquet through its local provider.
Per backend (Feast's SQLite and Redis online stores; recsmith's SQLite and Redis stores, the
same Redis server), over the same random requests of one user and 100 candidate items:

- feast_read: `get_online_features` for the user's fields (one entity row) and the items'
  fields (100 entity rows), `.to_dict()`: the values, not yet features;
- recsmith_read: `OnlineFeatures.request` (one `get_many` of the 101 records, decoded);
- recsmith_features: the same read, then the candidates' features built by the training code
  (what a served request needs; Feast would still have this step to do).

Feast is not a recsmith dependency; run this in an environment that has both:

    python -m venv --system-site-packages /tmp/feastenv && /tmp/feastenv/bin/pip install 'feast[redis]'
    /tmp/feastenv/bin/python bench/feast_store.py --run runs/ml100k_seq_models/HYBRID

Writes bench/feast_store.json. A timing: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from online_store import start_redis, timed  # noqa: E402
from throughput import cpu_description  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def record_tables(dataset):
    """The user and item records as two DataFrames of Feast-typed columns (lists for arrays)."""
    import pandas as pd

    builder, log, ids, attrs = dataset.feature_builder(), dataset.log, dataset.raw_ids(), dataset.feature_builder().attrs
    stamp = datetime(2020, 1, 1, tzinfo=timezone.utc)
    users = []
    for user in range(1, log.num_users + 1):
        lo, hi = int(log.user_start[user]), int(log.user_start[user + 1])
        row = {"user_id": int(ids["user_id"][user]), "event_timestamp": stamp, "code": user,
               "item": log.item[lo:hi].astype(np.int64).tolist(), "ts": log.ts[lo:hi].astype(np.int64).tolist(),
               "rating": log.rating[lo:hi].astype(np.float64).tolist(),
               "gender": int(attrs.gender[user]), "occupation": int(attrs.occupation[user]),
               "age": float(np.nan_to_num(attrs.age[user], nan=-1.0))}
        for name, values in builder.user_sums.items():  # [events + 1, width] sums are kept flat
            row[f"sum_{name}"] = values[lo:hi + 1].astype(np.float64).ravel().tolist()
        users.append(row)
    by_item = np.lexsort((log.ts, log.item))
    starts = np.searchsorted(log.item[by_item], np.arange(log.num_items + 2))
    items = []
    for item in range(1, log.num_items + 1):
        rows = by_item[starts[item]:starts[item + 1]]
        items.append({"item_id": item, "event_timestamp": stamp, "ts": log.ts[rows].astype(np.int64).tolist(),
                      "rating": log.rating[rows].astype(np.float64).tolist(),
                      "genre_flags": attrs.genre_flags[item].astype(np.int64).tolist(),
                      "year": float(np.nan_to_num(attrs.year[item], nan=-1.0)), "genre": int(attrs.genre[item])})
    return pd.DataFrame(users), pd.DataFrame(items)


def feast_store(workdir: Path, online: dict, users, items):
    """A Feast repo in `workdir` with the two feature views applied and materialized."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.types import Array, Float64, Int64

    def kind(values):
        sample = values.iloc[0]
        if isinstance(sample, list):
            return Array(Float64) if isinstance(sample[0] if sample else 0, float) else Array(Int64)
        return Float64 if isinstance(sample, float) else Int64

    views = []
    for name, frame, key in (("user_records", users, "user_id"), ("item_records", items, "item_id")):
        path = workdir / f"{name}.parquet"
        frame.to_parquet(path)
        entity = Entity(name=key, join_keys=[key], value_type=ValueType.INT64)
        fields = [Field(name=c, dtype=kind(frame[c])) for c in frame.columns if c not in (key, "event_timestamp")]
        views.append((entity, FeatureView(name=name, entities=[entity], ttl=timedelta(days=36500), schema=fields,
                                          source=FileSource(path=str(path), timestamp_field="event_timestamp"),
                                          online=True)))
    config = RepoConfig(project="recsmith_bench", provider="local", registry=str(workdir / "registry.db"),
                        online_store=online, offline_store={"type": "file"}, entity_key_serialization_version=3,
                        repo_path=str(workdir))
    store = FeatureStore(config=config)
    store.apply([obj for pair in views for obj in pair])
    start = time.perf_counter()
    store.materialize(datetime(2019, 1, 1, tzinfo=timezone.utc), datetime(2021, 1, 1, tzinfo=timezone.utc))
    return store, time.perf_counter() - start, [[f"{v.name}:{f.name}" for f in v.features] for _, v in views]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="A sequence run (its prepared dataset is used).")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--redis", help="A Redis URL (default: start redis-server on a free port)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "feast_store.json")
    args = parser.parse_args()
    import feast

    from recsmith.data.sequence_dataset import SequenceDataset
    from recsmith.online.features import OnlineFeatures
    from recsmith.online.materialize import dataset_of_run, materialize
    from recsmith.online.store import open_store

    dataset_dir = dataset_of_run(args.run)
    dataset = SequenceDataset.load(dataset_dir)
    log, raw = dataset.log, dataset.raw_ids()
    rng = np.random.default_rng(0)
    codes = rng.integers(1, log.num_users + 1, args.requests)
    candidates = [rng.choice(np.arange(1, log.num_items + 1), args.candidates, replace=False) for _ in codes]
    users = [int(raw["user_id"][u]) for u in codes]
    now = int(log.ts.max()) + 1
    user_frame, item_frame = record_tables(dataset)
    results = {"machine": cpu_description(), "feast": feast.__version__, "requests": args.requests,
               "candidates": args.candidates, "run": str(args.run), "backends": {}}
    redis = None if args.redis else start_redis()
    redis_url = args.redis or (redis[0] if redis else None)
    workdir = Path(tempfile.mkdtemp())
    backends = {"sqlite": ({"type": "sqlite", "path": str(workdir / "feast_online.db")}, f"sqlite:///{workdir}/thin.db")}
    if redis_url:
        host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        backends["redis"] = ({"type": "redis", "connection_string": host_port}, f"{redis_url}?prefix=thin")
    try:
        for backend, (online, uri) in backends.items():
            (workdir / backend).mkdir()
            store, feast_written, (user_fields, item_fields) = feast_store(workdir / backend, online, user_frame,
                                                                           item_frame)

            def feast_read(user, items):
                profile = store.get_online_features(user_fields, [{"user_id": user}]).to_dict()
                records = store.get_online_features(item_fields, [{"item_id": int(i)} for i in items]).to_dict()
                return profile, records

            check = feast_read(users[0], candidates[0])
            assert check[0]["item"][0] is not None and None not in check[1]["ts"], "Feast returned missing records"
            thin = open_store(uri)
            start = time.perf_counter()
            materialize(dataset_dir, thin)
            thin_written = time.perf_counter() - start
            online_features = OnlineFeatures(thin)
            calls = list(zip(users, candidates))
            results["backends"][backend] = {
                "materialize_s": {"feast": round(feast_written, 2), "recsmith": round(thin_written, 2)},
                "feast_read": timed(feast_read, calls),
                "recsmith_read": timed(lambda u, c: online_features.request(u, now, c), calls),
                "recsmith_features": timed(lambda u, c: online_features.features(u, now, c), calls)}
            print(backend, json.dumps(results["backends"][backend]), flush=True)
            thin.close()
    finally:
        if redis:
            redis[1].terminate()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
