"""Explicit features of a (target event, candidate item) pair, for LightGBM, the hybrid and
CTR-style candidate rows. Every feature is computed only from interactions strictly before
the prediction: the user's visible history (see recsmith.data.sequences) and, for item
statistics, every user's interactions with a timestamp before the target's.

Categorical (codes, 0 = unknown): user_id, item_id, gender, occupation, genre, hour, weekday.
Numeric: age, year, genre_count (profile and item attributes); item_pop, item_pop_30d,
item_mean_rating (the item before the target time); hist_len, hist_mean_rating,
hist_mean_log_pop, days_since_first, days_since_last, user_events_30d (sequence
statistics); genre_overlap, first_genre_share, year_gap, user_genre_mean_rating,
pop_vs_history (cross features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsmith.data.sequences import DAY, InteractionLog

CATEGORICAL = ("user_id", "item_id", "gender", "occupation", "genre", "hour", "weekday")
NUMERIC = ("age", "year", "genre_count", "item_pop", "item_pop_30d", "item_mean_rating", "hist_len",
           "hist_mean_rating", "hist_mean_log_pop", "days_since_first", "days_since_last", "user_events_30d",
           "genre_overlap", "first_genre_share", "year_gap", "user_genre_mean_rating", "pop_vs_history")
IDS = ("user_id", "item_id")  # identifiers: embeddings for neural models, not LightGBM features


@dataclass
class Attributes:
    """Side information by code: users [U + 1], items [I + 1] (row 0 = unknown)."""

    gender: np.ndarray  # int64 codes
    occupation: np.ndarray  # int64 codes
    age: np.ndarray  # float64 (NaN unknown)
    year: np.ndarray  # float64 (NaN unknown)
    genre_flags: np.ndarray  # [I + 1, G] float32 multi-hot
    genre: np.ndarray  # int64 first-genre code + 1 (0 = none)

    def vocab_sizes(self) -> dict[str, int]:
        return {"gender": int(self.gender.max()) + 1, "occupation": int(self.occupation.max()) + 1,
                "genre": self.genre_flags.shape[1] + 1, "hour": 24, "weekday": 7}



ITEM_SHIFT = 1 << 40  # the (item, time) key: item * 2**40 + ts


def popularity(item_keys: np.ndarray, item: np.ndarray, before) -> np.ndarray:
    """Interactions with `item` (any user) before `before`, from the sorted (item, time) keys
    of every interaction (float64): most-popular's score and the `log_pop` features' count."""
    return (np.searchsorted(item_keys, item * ITEM_SHIFT + before, "left")
            - np.searchsorted(item_keys, item * ITEM_SHIFT, "left")).astype(np.float64)


class FeatureBuilder:
    """Prefix sums over the sorted log (per user) and over the log sorted by (item, time)
    (per item), so any pair's features are a few gathers and one binary search.

    `from_parts` builds one from precomputed pieces: the online store (recsmith.online)
    rebuilds a user's slice of the log and the candidates' item events from what it holds
    and scores them with this same `features`."""

    def __init__(self, log: InteractionLog, attrs: Attributes):
        by_item = np.lexsort((log.ts, log.item))
        item_keys = log.item[by_item] * ITEM_SHIFT + log.ts[by_item]  # sorted
        self._set(log, attrs, item_keys, prefix_sums(log.rating[by_item].astype(np.float64)), {})
        pop_then = self.item_popularity(log.item, log.ts)  # popularity of each event's item at its time
        self.user_sums = user_prefix_sums(log.item, log.rating, pop_then, attrs)

    @classmethod
    def from_parts(cls, log: InteractionLog, attrs: Attributes, item_keys: np.ndarray, item_rating_sum: np.ndarray,
                   user_sums: dict[str, np.ndarray]) -> "FeatureBuilder":
        """`user_sums` as `user_prefix_sums` gives them (indexed like `log`, a leading row),
        `item_keys` = item * 2**40 + ts sorted and `item_rating_sum` their ratings' prefix."""
        builder = cls.__new__(cls)
        builder._set(log, attrs, item_keys, item_rating_sum, user_sums)
        return builder

    def _set(self, log, attrs, item_keys, item_rating_sum, user_sums) -> None:
        self.log, self.attrs, self.item_keys, self.item_rating_sum = log, attrs, item_keys, item_rating_sum
        self.user_sums = user_sums

    def item_popularity(self, item: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Interactions with `item` (any user) with a timestamp < `before` (float64)."""
        return popularity(self.item_keys, item, before)

    def _item_rating_sum(self, item: np.ndarray, before: np.ndarray) -> np.ndarray:
        hi = np.searchsorted(self.item_keys, item * ITEM_SHIFT + before, "left")
        lo = np.searchsorted(self.item_keys, item * ITEM_SHIFT, "left")
        return self.item_rating_sum[hi] - self.item_rating_sum[lo]

    def features(self, events: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        """Features of pairs (events[n], candidates[n]); both [N]. Categorical as int64
        codes, numeric as float32 (NaN where undefined, e.g. no rating yet)."""
        log, attrs = self.log, self.attrs
        user, t = log.user[events], log.ts[events]
        lo, hi = log.user_start[user], log.prefix_end[events]
        s = {name: v[hi] - v[lo] for name, v in self.user_sums.items()}
        n = s["count"]
        with np.errstate(invalid="ignore", divide="ignore"):
            pop = self.item_popularity(candidates, t)
            hist_mean_log_pop = s["log_pop"] / n
            cand_flags = attrs.genre_flags[candidates]  # [N, G]
            hist_genres = s["genre_counts"]  # [N, G]
            first = np.clip(attrs.genre[candidates] - 1, 0, None)
            rows = np.arange(len(events))
            first_count = np.where(attrs.genre[candidates] > 0, hist_genres[rows, first], np.nan)
            first_rating = s["genre_ratings"][rows, first]
            last_seen = np.where(hi > lo, log.ts[np.maximum(hi - 1, 0)], t)
            out = {
                "user_id": user, "item_id": candidates,
                "gender": attrs.gender[user], "occupation": attrs.occupation[user], "genre": attrs.genre[candidates],
                "hour": (t // 3600) % 24, "weekday": (t // 86400 + 3) % 7,  # 1970-01-01 was a Thursday
                "age": attrs.age[user], "year": attrs.year[candidates], "genre_count": cand_flags.sum(1),
                "item_pop": pop, "item_pop_30d": pop - self.item_popularity(candidates, t - 30 * 86400),
                "item_mean_rating": self._item_rating_sum(candidates, t) / pop,
                "hist_len": n, "hist_mean_rating": s["rating"] / n, "hist_mean_log_pop": hist_mean_log_pop,
                "days_since_first": np.where(hi > lo, (t - log.ts[lo]) / DAY, np.nan),
                "days_since_last": np.where(hi > lo, (t - last_seen) / DAY, np.nan),
                "user_events_30d": hi - self._user_first_after(user, lo, hi, t - 30 * 86400),
                "genre_overlap": (hist_genres * cand_flags).sum(1) / np.maximum(cand_flags.sum(1), 1) / n,
                "first_genre_share": first_count / n,
                "year_gap": np.abs(attrs.year[candidates] - s["year"] / s["has_year"]),
                "user_genre_mean_rating": first_rating / first_count,
                "pop_vs_history": np.log1p(pop) - hist_mean_log_pop,
            }
        return {k: (v.astype(np.int64) if k in CATEGORICAL else np.asarray(v, np.float32)) for k, v in out.items()}

    def _user_first_after(self, user: np.ndarray, lo: np.ndarray, hi: np.ndarray, since: np.ndarray) -> np.ndarray:
        """Index of the user's first visible event at or after `since` (hi when none)."""
        keys = self.log.user * ITEM_SHIFT + self.log.ts  # sorted: the log is ordered by (user, ts)
        return np.clip(np.searchsorted(keys, user * ITEM_SHIFT + since, "left"), lo, hi)


def user_prefix_sums(item: np.ndarray, rating: np.ndarray, pop_then: np.ndarray, attrs: Attributes) -> dict:
    """Prefix sums over events (a leading zero row) of what the history statistics add up:
    `pop_then` is each event's item popularity just before it."""
    flags = attrs.genre_flags[item]  # [E, G]
    return {"count": prefix_sums(np.ones(len(item))), "rating": prefix_sums(rating.astype(np.float64)),
            "log_pop": prefix_sums(np.log1p(pop_then)), "year": prefix_sums(np.nan_to_num(attrs.year[item])),
            "has_year": prefix_sums(np.isfinite(attrs.year[item]).astype(np.float64)),
            "genre_counts": prefix_sums(flags), "genre_ratings": prefix_sums(flags * rating[:, None].astype(np.float32))}


def prefix_sums(values: np.ndarray) -> np.ndarray:
    """Cumulative sums with a leading zero row: sum(values[a:b]) = out[b] - out[a]."""
    values = np.asarray(values)
    zero = np.zeros((1, *values.shape[1:]), dtype=np.float64 if values.dtype != np.float32 else np.float32)
    return np.concatenate([zero, np.cumsum(values, axis=0, dtype=zero.dtype)])
