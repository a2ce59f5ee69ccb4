"""`recsmith features materialize RUN --store URI`: a sequence run's dataset into the online
store, as a new version switched to at the end (recsmith.online.store).

Records (recsmith.online.codec):
    user:<raw id>   the user's time-ordered events (item code, ts, rating), the history
                    statistics' prefix sums at each of them (recsmith.data.seq_features),
                    and the profile (code, gender, occupation, age)
    item:<code>     the item's events' times and ratings in time order (popularity and mean
                    rating as of any time) and its attributes (year, genre flags, first genre)
    catalog         every item's raw id by code, and the attribute vocabulary sizes
    popularity      every interaction's (item, time) key, sorted: any item's popularity as of
                    any time (most-popular's scores over the whole catalogue in one read)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from recsmith.data.sequence_dataset import SequenceDataset
from recsmith.errors import ConfigError
from recsmith.online.codec import pack
from recsmith.online.store import OnlineStore

BATCH = 2000  # records per put_many
POPULARITY = "popularity"
HISTORY_RULE = "strict_time"  # what a request at time t sees: the user's events before t


def dataset_of_run(run_dir: str | Path) -> Path:
    """The prepared dataset a finished run was trained on (its eval.json, else its config)."""
    from recsmith.config.loader import load_experiment
    from recsmith.data.sources import resolve_dataset
    from recsmith.run_dir import RunDir

    run = RunDir(run_dir)
    if not run.config.is_file():
        raise ConfigError(f"{run_dir}: not a run dir (no config.yaml)")
    recorded = (run.read_json(run.eval) or {}).get("dataset")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return Path(resolve_dataset(load_experiment(run.config).data))


def materialize(dataset_dir: str | Path, store: OnlineStore, source: str = "",
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Write every user and item record into a new version, then switch to it; the manifest."""
    dataset = SequenceDataset.load(dataset_dir)
    if dataset.schema.meta.get("history") != HISTORY_RULE:
        raise ConfigError(f"{dataset_dir}: prepared with history '{dataset.schema.meta.get('history')}'; online "
                          f"features follow '{HISTORY_RULE}' (a request sees the events before its time)")
    builder, log, ids = dataset.feature_builder(), dataset.log, dataset.raw_ids()
    attrs = builder.attrs
    version, total, done = store.new_version(), log.num_users + log.num_items, 0

    def flush(records: dict) -> None:
        nonlocal done
        store.put_many(records, version)
        done += len(records)
        if progress:
            progress(done, total)

    records = {}
    for user in range(1, log.num_users + 1):
        lo, hi = int(log.user_start[user]), int(log.user_start[user + 1])
        sums = {f"sum_{name}": values[lo:hi + 1] for name, values in builder.user_sums.items()}
        age = float(attrs.age[user])
        records[f"user:{ids['user_id'][user]}"] = pack(
            {"item": log.item[lo:hi], "ts": log.ts[lo:hi], "rating": log.rating[lo:hi], **sums},
            code=user, gender=int(attrs.gender[user]), occupation=int(attrs.occupation[user]),
            age=None if np.isnan(age) else age)
        if len(records) >= BATCH:
            flush(records)
            records = {}
    by_item = np.lexsort((log.ts, log.item))
    starts = np.searchsorted(log.item[by_item], np.arange(log.num_items + 2))
    for item in range(1, log.num_items + 1):
        rows = by_item[starts[item]:starts[item + 1]]
        year = float(attrs.year[item])
        records[f"item:{item}"] = pack({"ts": log.ts[rows], "rating": log.rating[rows],
                                        "genre_flags": attrs.genre_flags[item]},
                                       raw=ids["item_id"][item], year=None if np.isnan(year) else year,
                                       genre=int(attrs.genre[item]))
        if len(records) >= BATCH:
            flush(records)
            records = {}
    records["catalog"] = pack({}, items=ids["item_id"], genres=int(attrs.genre_flags.shape[1]))
    records[POPULARITY] = pack({"keys": builder.item_keys})
    flush(records)
    manifest = {"version": version, "source": source, "dataset": str(Path(dataset_dir).resolve()),
                "dataset_name": dataset.schema.name, "users": log.num_users, "items": log.num_items,
                "events": len(log), "history": HISTORY_RULE, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    store.commit(version, manifest)
    return manifest

