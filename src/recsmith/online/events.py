"""`POST /events`: a user's new interaction into the online store, visible to the next request.

An event extends the user's record (its history and the history statistics' prefix sums, one
row more, computed the way `user_prefix_sums` computes a logged event's: the item's
popularity just before it, its rating, year and genres), the item's (its time and rating)
and the catalogue's popularity keys, in one atomic update with the event id, so a repeated event id changes nothing. A user's
events arrive in time order: an event older than the user's last is refused (the history
before it would change, which is a retrain's job, not a request's).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recsmith.data.seq_features import ITEM_SHIFT
from recsmith.errors import DataError
from recsmith.online.codec import pack, unpack
from recsmith.online.materialize import POPULARITY
from recsmith.online.store import OnlineStore


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128, description="idempotency key: a repeated id is applied once")
    user: str | int
    item: str | int = Field(description="the item's raw id, as in the catalogue")
    ts: int = Field(ge=0, description="seconds since the epoch")
    rating: int = Field(ge=0, le=127)


def apply_event(store: OnlineStore, event: Event, item_code: int, version: int | None = None) -> bool:
    """Apply `event` (its item already looked up: `item_code`); False when its id was seen."""
    keys = [f"event:{event.id}", f"user:{event.user}", f"item:{item_code}", POPULARITY]

    def change(values: list) -> dict[str, bytes]:
        seen, user_value, item_value, popularity_value = values
        if seen is not None:
            return {}
        if item_value is None:
            raise DataError(f"event {event.id}: item {event.item!r} is not in the online store's catalogue")
        item, item_info = unpack(item_value)
        user, profile = unpack(user_value) if user_value is not None else new_user(item)
        if len(user["ts"]) and event.ts < user["ts"][-1]:
            raise DataError(f"event {event.id}: at {event.ts}, before user {event.user!r}'s last event "
                            f"({int(user['ts'][-1])}); a user's events arrive in time order")
        pop_then = float(np.searchsorted(item["ts"], event.ts, "left"))  # the item's events before this one
        flags, year = item["genre_flags"], np.nan if item_info["year"] is None else item_info["year"]
        added = {"count": 1.0, "rating": float(event.rating), "log_pop": np.log1p(pop_then),
                 "year": np.nan_to_num(year), "has_year": float(np.isfinite(year)),
                 "genre_counts": flags, "genre_ratings": flags * np.float32(event.rating)}
        grown = {"item": np.r_[user["item"], item_code].astype(np.int64),
                 "ts": np.r_[user["ts"], event.ts].astype(np.int64),
                 "rating": np.r_[user["rating"], event.rating].astype(np.int8)}
        for name, value in added.items():
            sums = user[f"sum_{name}"]
            grown[f"sum_{name}"] = np.concatenate([sums, (sums[-1] + value)[None].astype(sums.dtype)])
        at = int(np.searchsorted(item["ts"], event.ts, "right"))
        item_grown = {**item, "ts": np.insert(item["ts"], at, event.ts), "rating": np.insert(item["rating"], at,
                                                                                         event.rating)}
        written = {keys[0]: b"1", keys[1]: pack(grown, **profile), keys[2]: pack(item_grown, **item_info)}
        if popularity_value is not None:
            sorted_keys = unpack(popularity_value)[0]["keys"]
            key = item_code * ITEM_SHIFT + event.ts
            written[POPULARITY] = pack({"keys": np.insert(sorted_keys, np.searchsorted(sorted_keys, key, "right"), key)})
        return written

    return bool(store.update(keys, change, version))


def new_user(item_arrays: dict) -> tuple[dict, dict]:
    """A user the store has not seen: no history, an unknown profile (code 0 = unknown)."""
    genres = len(item_arrays["genre_flags"])
    empty = {"item": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64), "rating": np.zeros(0, np.int8)}
    sums = {f"sum_{n}": np.zeros(1) for n in ("count", "rating", "log_pop", "year", "has_year")}
    sums.update({f"sum_{n}": np.zeros((1, genres), np.float32) for n in ("genre_counts", "genre_ratings")})
    return {**empty, **sums}, {"code": 0, "gender": 0, "occupation": 0, "age": None}
