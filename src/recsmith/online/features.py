"""A request's features from the online store, by the code that built the training features.

For (user, time t, candidates) the store gives the user's record and the candidates' records
(recsmith.online.materialize). From them this builds a one-user slice of the interaction log
(the user's events before t, then the request itself as the target event) and the candidates'
item events, and hands them to `FeatureBuilder.from_parts`: the features are
`FeatureBuilder.features` of that slice, the same formula, sums and binary searches that
wrote the prepared dataset's candidate rows. Inside the slice the user is code 1 and the
candidates are 1..m (small arrays whatever the catalogue's size); the `user_id` and `item_id`
columns are given back in the dataset's codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from recsmith.data.seq_features import ITEM_SHIFT, Attributes, FeatureBuilder, prefix_sums
from recsmith.data.sequences import InteractionLog
from recsmith.errors import DataError
from recsmith.online.codec import unpack
from recsmith.online.store import OnlineStore



@dataclass
class UserRecord:
    arrays: dict[str, np.ndarray]
    profile: dict

    @property
    def code(self) -> int:
        return int(self.profile["code"])

    def visible(self, at: int) -> int:
        """How many of the user's events a request at `at` sees (those strictly before it)."""
        return int(np.searchsorted(self.arrays["ts"], at, "left"))


def request_time_now() -> int:
    """A request's time when it gives none: the next second. A request at t sees the events
    strictly before t (the history rule the features were trained with), so "now" must
    include an event posted earlier in the current second (timestamps are whole seconds)."""
    return int(time.time()) + 1


class OnlineFeatures:
    def __init__(self, store: OnlineStore):
        self.store = store

    def user(self, user, version: int | None = None) -> UserRecord:
        return _user_record(user, self.store.get_many([f"user:{user}"], version)[0])

    def request(self, user, at: int, candidates=(), version: int | None = None,
                num_items: int = 0) -> "RequestView":
        """What a request of `user` at time `at` (seconds) sees, with these candidate item
        codes; `num_items` (the catalogue's size) lets a model score every item."""
        candidates = np.asarray(candidates, np.int64)
        items, local = np.unique(candidates, return_inverse=True)
        values = self.store.get_many([f"user:{user}", *(f"item:{i}" for i in items.tolist())], version)
        record = _user_record(user, values[0])
        missing = [int(i) for i, v in zip(items, values[1:]) if v is None]
        if missing:
            raise DataError(f"item(s) {missing[:5]} are not in the online store's catalogue")
        return RequestView(record, at, candidates, local + 1,
                           [unpack(v) for v in values[1:]], num_items)

    def features(self, user, at: int, candidates, version: int | None = None) -> dict[str, np.ndarray]:
        return self.request(user, at, candidates, version).features()


def _user_record(user, value: bytes | None) -> UserRecord:
    if value is None:
        raise DataError(f"user {user!r} is not in the online store")
    return UserRecord(*unpack(value))


class RequestView:
    """The user's first k events (those before `at`) and the request (event k) as a log of
    user 1 (`log`, its items in the dataset's codes: what a sequence model reads), and the
    candidates' events as items 1..m (what `features` reads)."""

    def __init__(self, record: UserRecord, at: int, candidates: np.ndarray, local: np.ndarray, item_records: list,
                 num_items: int = 0):
        self.record, self.candidates, self.local = record, candidates, local
        self.visible = k = record.visible(at)
        arrays, profile = record.arrays, record.profile
        self.log = InteractionLog(
            user=np.ones(k + 1, np.int64), item=np.r_[arrays["item"][:k], 0].astype(np.int64),
            ts=np.r_[arrays["ts"][:k], at].astype(np.int64), rating=np.r_[arrays["rating"][:k], 0].astype(np.int8),
            split=np.zeros(k + 1, np.int8), prefix_end=np.full(k + 1, k, np.int64),
            user_start=np.array([0, 0, k + 1], np.int64), num_items=num_items)
        genres = len(item_records[0][0]["genre_flags"]) if item_records else 0
        self.attrs = Attributes(
            gender=np.array([0, profile["gender"]], np.int64),
            occupation=np.array([0, profile["occupation"]], np.int64),
            age=np.array([np.nan, np.nan if profile["age"] is None else profile["age"]]),
            year=np.array([np.nan, *(np.nan if v["year"] is None else v["year"] for _, v in item_records)]),
            genre_flags=np.vstack([np.zeros(genres, np.float32), *(a["genre_flags"] for a, _ in item_records)]),
            genre=np.array([0, *(v["genre"] for _, v in item_records)], np.int64))
        keys = [j * ITEM_SHIFT + a["ts"] for j, (a, _) in enumerate(item_records, start=1)]
        ratings = [a["rating"].astype(np.float64) for a, _ in item_records]
        self.item_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        self.item_rating_sum = prefix_sums(np.concatenate(ratings) if ratings else np.zeros(0))
        self.user_sums = {name.removeprefix("sum_"): values[:k + 1] for name, values in arrays.items()
                          if name.startswith("sum_")}

    def features(self) -> dict[str, np.ndarray]:
        """`FeatureBuilder.features` of (the request, each candidate), in the dataset's codes."""
        builder = FeatureBuilder.from_parts(self.log, self.attrs, self.item_keys, self.item_rating_sum, self.user_sums)
        out = builder.features(np.full(len(self.candidates), self.visible), self.local)
        out["user_id"] = np.full(len(self.candidates), self.record.code, np.int64)
        out["item_id"] = self.candidates
        return out
