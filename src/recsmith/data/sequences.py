"""Sequence data: per-user time-ordered histories, split leave-last-out by time.

The interaction log is sorted by (user, timestamp, line in the raw file). Per user the
last interaction is the test target, the second-to-last the validation target, the rest
train. What a prediction for event e may see is `visible(e)`: the user's events in
[user_start, prefix_end[e]). `history` chooses prefix_end:
  strict_time  only events strictly before e's timestamp (same-second ratings, half of
               MovieLens-100K's consecutive pairs, are not visible). No leakage: default.
  order        every event before e in the sorted log, same-second ones included
               (RecBole's convention; used for the side-by-side with it).

Everything here is vectorised numpy over the whole log; no per-user Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsmith.errors import DataError

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
INTERACTIONS_FILE = "interactions.parquet"
DAY = 86400.0


@dataclass
class InteractionLog:
    """The sorted log. Users are encoded 1..num_users, items 1..num_items (0 = padding)."""

    user: np.ndarray  # [E] int64
    item: np.ndarray  # [E] int64
    ts: np.ndarray  # [E] int64 seconds
    rating: np.ndarray  # [E] int8
    split: np.ndarray  # [E] int8, SPLIT_CODES
    prefix_end: np.ndarray  # [E] int64: visible(e) = [user_start[user[e]], prefix_end[e])
    user_start: np.ndarray  # [num_users + 2] int64: events of user u are [user_start[u], user_start[u+1])
    num_items: int

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_users(self) -> int:
        return len(self.user_start) - 2

    def targets(self, split: str) -> np.ndarray:
        """Event indices predicted in `split`: train events with a non-empty history, or the
        valid / test event of every user."""
        events = np.flatnonzero(self.split == SPLIT_CODES[split])
        if split == "train":
            events = events[self.visible_count(events) > 0]
        return events

    def visible_count(self, events: np.ndarray) -> np.ndarray:
        return self.prefix_end[events] - self.user_start[self.user[events]]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        table = pa.table({"user": self.user, "item": self.item, "ts": self.ts, "rating": self.rating,
                          "split": self.split, "prefix_end": self.prefix_end})
        pq.write_table(table, directory / INTERACTIONS_FILE)

    @classmethod
    def load(cls, directory: str | Path, num_items: int) -> "InteractionLog":
        path = Path(directory) / INTERACTIONS_FILE
        if not path.is_file():
            raise DataError(f"not a sequence dataset (no {INTERACTIONS_FILE}): {directory}")
        t = pq.read_table(path)
        user = t["user"].to_numpy()
        return cls(user, t["item"].to_numpy(), t["ts"].to_numpy(), t["rating"].to_numpy(), t["split"].to_numpy(),
                   t["prefix_end"].to_numpy(), user_starts(user), num_items)


def user_starts(user: np.ndarray) -> np.ndarray:
    """Offsets of each user's block in a log sorted by user (users 1..U, all present)."""
    counts = np.bincount(user, minlength=int(user.max()) + 1 if len(user) else 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def build_log(user_raw: np.ndarray, item_raw: np.ndarray, ts: np.ndarray, rating: np.ndarray,
              line: np.ndarray, item_ids: np.ndarray, history: str) -> tuple[InteractionLog, np.ndarray, np.ndarray]:
    """Sort, encode and split raw interactions. `item_ids` is the catalogue (raw ids; every
    rated item must be in it). Returns the log and the raw ids of encoded users / items
    (index = code)."""
    users = np.unique(user_raw)
    counts = np.bincount(np.searchsorted(users, user_raw), minlength=len(users))
    if counts.min() < 3:
        raise DataError(f"leave-last-out needs ≥ 3 interactions per user; {int((counts < 3).sum())} users have fewer")
    items = np.unique(item_ids)
    unknown = ~np.isin(item_raw, items)
    if unknown.any():
        raise DataError(f"{int(unknown.sum())} ratings name items missing from the item file "
                        f"(e.g. item {int(item_raw[unknown][0])})")
    user = np.searchsorted(users, user_raw).astype(np.int64) + 1
    item = np.searchsorted(items, item_raw).astype(np.int64) + 1
    order = np.lexsort((line, ts, user))
    user, item, ts, rating = user[order], item[order], ts[order].astype(np.int64), rating[order].astype(np.int8)
    starts = user_starts(user)
    index = np.arange(len(user))
    from_end = starts[user + 1] - index  # 1 for the user's last event
    split = np.where(from_end == 1, 2, np.where(from_end == 2, 1, 0)).astype(np.int8)
    if history == "order":
        prefix_end = index.astype(np.int64)
    elif history == "strict_time":
        new_run = np.ones(len(user), bool)
        new_run[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
        prefix_end = np.maximum.accumulate(np.where(new_run, index, 0)).astype(np.int64)
    else:
        raise DataError(f"unknown history rule '{history}' (strict_time or order)")
    return InteractionLog(user, item, ts, rating, split, prefix_end, starts, len(items)), users, items


# ------------------------------------------------------------------- model inputs
def histories(log: InteractionLog, events: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last `max_length` visible items of each event, right-padded.

    Returns items [N, L] int64 (0 = padding), lengths [N] int64 and ages [N, L] float32
    (days from each history event to the target's time; 0 at padding)."""
    end = log.prefix_end[events]
    start = np.maximum(log.user_start[log.user[events]], end - max_length)
    lengths = end - start
    index = start[:, None] + np.arange(max_length)[None, :]  # [N, L]
    valid = np.arange(max_length)[None, :] < lengths[:, None]
    index = np.where(valid, index, 0)
    items = np.where(valid, log.item[index], 0)
    ages = np.where(valid, (log.ts[events][:, None] - log.ts[index]) / DAY, 0.0).astype(np.float32)
    return items.astype(np.int64), lengths.astype(np.int64), ages


@dataclass
class Windows:
    """Training sequences for next-item models trained on every position at once.

    items [W, L] int64 right-padded; targets [W, L] int64 (the item predicted at that
    position, 0 = no loss there); source [W, L] int64: the position whose hidden state
    predicts it (its last visible event inside the window); events [W, L] the log index
    of each position (-1 at padding)."""

    items: np.ndarray
    targets: np.ndarray
    source: np.ndarray
    events: np.ndarray


def train_windows(log: InteractionLog, max_length: int) -> Windows:
    """Each user's train events cut into consecutive windows of `max_length`, the last one
    ending at the last train event. Every train target appears once; it is predicted from
    its visible events inside its window (a target at a window's start has none and is
    skipped)."""
    train_end = np.flatnonzero(log.split == SPLIT_CODES["valid"])  # the valid event ends the train block
    first = log.user_start[log.user[train_end]]
    count = train_end - first
    per_user = -(-count // max_length)  # ceil
    owner = np.repeat(np.arange(len(train_end)), per_user)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # window number from the end
    stop = train_end[owner] - k * max_length
    begin = np.maximum(first[owner], stop - max_length)
    length = stop - begin
    index = begin[:, None] + np.arange(max_length)[None, :]  # [W, L]
    valid = np.arange(max_length)[None, :] < length[:, None]
    index = np.where(valid, index, 0)
    items = np.where(valid, log.item[index], 0)
    source = log.prefix_end[index] - 1 - begin[:, None]  # visible events of the target inside the window
    has_target = valid & (source >= 0)
    return Windows(items.astype(np.int64), np.where(has_target, items, 0).astype(np.int64),
                   np.where(has_target, source, 0).astype(np.int64), np.where(valid, index, -1))


def rated_items(log: InteractionLog) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs of every interaction, as sorted int64 keys user * (I + 1) + item."""
    return np.unique(log.user * (log.num_items + 1) + log.item), np.int64(log.num_items + 1)


def sample_unrated(log: InteractionLog, users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[len(users), k] items each user never interacted with (in the whole log), uniform."""
    keys, span = rated_items(log)
    owner = np.repeat(users, k)
    draws = rng.integers(1, log.num_items + 1, len(owner))
    for _ in range(200):
        taken = np.isin(owner * span + draws, keys)
        if not taken.any():
            return draws.reshape(len(users), k)
        draws[taken] = rng.integers(1, log.num_items + 1, int(taken.sum()))
    raise DataError("could not sample unrated items: some user interacted with (almost) every item")
