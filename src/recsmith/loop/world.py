"""The synthetic funnel day by day, with the truth the loop is checked against.

A day's world is the built-in funnel (recsmith.data.synthetic) with, on day d:
  * popularity drift: the Zipf exponents of users, items and context values grow by
    `popularity_shift_per_day · d` (a covariate shift: P(click | features) is unchanged);
  * new users and ads: a share `new_user_share_per_day · d` of requests comes from users
    drawn uniformly from the id space (mostly never seen before), and a share
    `new_item_share_per_day · d` of candidate ads likewise;
  * a CTR trend: `ctr_trend_per_day · d` is added to every click logit.

A request is one user in one context with `candidates` ads; the service scores them, the
top one by predicted CTR is shown. Every candidate's true click and conversion
probabilities are known, so the oracle can say what any model's choices are truly worth.
Day 0 is the bootstrap log: impressions shown by a random policy, before any model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsmith.config.schema import SyntheticFunnelConfig
from recsmith.data.synthetic import DENSE, FIELDS, NUM_ITEMS, NUM_USERS, SyntheticFunnel, _sigmoid

FIELD_NAMES = tuple(f.name for f in FIELDS)
USER_FIELDS = tuple(f.name for f in FIELDS if f.entity == "user")
ITEM_FIELDS = tuple(f.name for f in FIELDS if f.entity == "item")
PER_AD_CONTEXT = ("ad_format",)  # context fields that belong to the ad, not the request
REQUEST_FIELDS = tuple(f.name for f in FIELDS if f.entity in ("user", "context") and f.name not in PER_AD_CONTEXT)


@dataclass
class Requests:
    """`n` requests × `k` candidates, row r·k + j is candidate j of request r."""

    day: int
    k: int
    fields: dict[str, np.ndarray]  # raw 0-based ids [n·k]
    dense: dict[str, np.ndarray]  # [n·k] float32
    true_ctr: np.ndarray  # [n·k]
    true_cvr: np.ndarray  # [n·k] post-click

    @property
    def n(self) -> int:
        return len(self.true_ctr) // self.k

    def slice(self, start: int, stop: int) -> "Requests":
        rows = slice(start * self.k, stop * self.k)
        return Requests(self.day, self.k, {n: v[rows] for n, v in self.fields.items()},
                        {n: v[rows] for n, v in self.dense.items()}, self.true_ctr[rows], self.true_cvr[rows])

    def columns(self, request: int, missing: tuple[str, ...] = ()) -> dict[str, list]:
        """One request's candidates in the service's columns form; `missing` features are null."""
        rows = slice(request * self.k, (request + 1) * self.k)
        out = {name: values[rows].tolist() for name, values in self.fields.items()}
        out.update({name: values[rows].tolist() for name, values in self.dense.items()})
        for name in missing:
            out[name] = [None] * self.k
        return out

    def top(self, scores: np.ndarray) -> np.ndarray:
        """Row index of each request's top candidate by `scores` [n·k]."""
        return np.argmax(scores.reshape(self.n, self.k), axis=1) + np.arange(self.n) * self.k


class DayWorld:
    def __init__(self, world_cfg, day: int):
        self.cfg, self.day = world_cfg, day
        knobs = SyntheticFunnelConfig(click_rate=world_cfg.click_rate, conversion_rate=world_cfg.conversion_rate,
                                      zipf_shift=world_cfg.popularity_shift_per_day * day)
        self.funnel = SyntheticFunnel(knobs, world_cfg.seed)

    def requests(self, n: int, k: int, stream: int = 0) -> Requests:
        """`n` requests of `k` candidates, the same for the same (seed, day, stream)."""
        world, cfg = self.funnel.world, self.cfg
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7, self.day, stream]))
        fields = world.draw_fields(rng, n * k)
        first = np.repeat(np.arange(n) * k, k)  # every candidate shares its request's first row's user and context
        for name in REQUEST_FIELDS:
            fields[name] = fields[name][first]
        new_user = np.repeat(rng.random(n) < cfg.new_user_share_per_day * self.day, k)
        if new_user.any():
            users = np.repeat(rng.integers(0, NUM_USERS, n), k)
            fields["user_id"] = np.where(new_user, users, fields["user_id"]).astype(np.int32)
            for name, table in world.user.items():
                fields[name] = table[fields["user_id"]].astype(np.int32)
        new_item = rng.random(n * k) < cfg.new_item_share_per_day * self.day
        if new_item.any():
            fields["item_id"] = np.where(new_item, rng.integers(0, NUM_ITEMS, n * k), fields["item_id"]).astype(np.int32)
            for name, table in world.item.items():
                fields[name] = table[fields["item_id"]].astype(np.int32)
            fields["creative_id"] = (2 * fields["item_id"] + rng.integers(0, 2, n * k)).astype(np.int32)
        dense = world.dense_features(rng, fields)
        for name in ("user_activity", "user_hist_ctr"):  # a user's, in the request
            dense[name] = dense[name][first]
        true_ctr, true_cvr = self.truth(fields, dense)
        return Requests(self.day, k, fields, {n: v.astype(np.float32) for n, v in dense.items()}, true_ctr, true_cvr)

    def truth(self, fields: dict[str, np.ndarray], dense: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(true CTR, true post-click CVR) of rows, on this day (the CTR trend included)."""
        funnel, c = self.funnel, self.funnel.calibration
        k = funnel.knobs
        g_click, g_cvr = funnel.world.logits(fields, dense)
        z_click, z_cvr = (g_click - c.mean_click) / c.std_click, (g_cvr - c.mean_cvr) / c.std_cvr
        trend = self.cfg.ctr_trend_per_day * self.day
        return (_sigmoid(c.alpha_click + trend + k.ctr_signal * z_click),
                _sigmoid(c.alpha_cvr + k.cvr_signal * z_cvr + k.selection_bias * z_click))


def outcomes(true_ctr: np.ndarray, true_cvr: np.ndarray, seed: int, day: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """(click, conversion) int8 draws for shown rows."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11, day, stream]))
    click = rng.random(len(true_ctr)) < true_ctr
    conversion = click & (rng.random(len(true_cvr)) < true_cvr)
    return click.astype(np.int8), conversion.astype(np.int8)


def raw_columns(requests: Requests, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The raw feature columns (as the service logs them) of `rows`."""
    out = {name: requests.fields[name][rows] for name in FIELD_NAMES}
    out.update({name: requests.dense[name][rows] for name in DENSE})
    return out
