"""The built-in synthetic ad funnel: impressions with known true click and conversion
probabilities, so a user can measure the oracle AUC ceiling and the entire-space CVR
quality that real logs never show.

Generative story (all draws seeded; `data.seed` fixes the world and every row):
  * a world of 100k users and 50k items (Zipf popularity) with attributes derived from the
    ids (age, city, segment...; category, brand, shop, campaign, price...), and per-impression
    context fields (hour, position, page, ...): 26 categorical fields, 3 dense fields;
  * every field value carries a click effect and an own conversion effect; the two are
    drawn with correlation `task_correlation`; user×item, query×category, hour×category and
    device×format interactions come from latent vectors drawn the same way;
  * g_c, g_v = sums of those effects, standardised to z_c, z_v on a calibration sample;
  * true_ctr = σ(α_c + ctr_signal·z_c);
    true_cvr = σ(α_v + cvr_signal·z_v + selection_bias·z_c)   (post-click probability):
    `selection_bias` is how much the features that drive clicks also shift conversion,
    the lever behind sample-selection bias in a CVR model trained on clicks only;
  * α_c, α_v are solved so that the click rate and the post-click conversion rate hit
    their targets;
  * click ~ Bernoulli(true_ctr); conversion_if_clicked ~ Bernoulli(true_cvr) for every
    impression (a truth column: the counterfactual outcome had it been clicked);
    conversion = click · conversion_if_clicked (observed only after a click).
Truth columns (true_ctr, true_cvr, conversion_if_clicked) are stored but never features.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsmith.data.schema import SPLITS, DatasetSchema, DenseField, SparseField
from recsmith.features.definitions import FeatureSet, FeatureSpec, Transformation
from recsmith.features.pipeline import FeaturePipeline
from recsmith.tasks import FUNNEL_TASKS

GENERATOR_VERSION = 2
NUM_USERS, NUM_ITEMS = 100_000, 50_000
CHUNK_ROWS = 250_000
CALIBRATION_ROWS = 200_000
LATENT_DIM = 8


@dataclass(frozen=True)
class FieldSpec:
    name: str
    vocab: int  # raw values 0..vocab-1 (encoded as raw + 1; 0 is "unknown")
    entity: str
    click_scale: float  # std of the field's first-order click effect
    cvr_scale: float  # std of its own conversion effect


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("user_id", NUM_USERS, "user", 0.45, 0.45),
    FieldSpec("user_age", 8, "user", 0.20, 0.30),
    FieldSpec("user_gender", 3, "user", 0.10, 0.20),
    FieldSpec("user_city", 400, "user", 0.20, 0.20),
    FieldSpec("user_level", 10, "user", 0.20, 0.30),
    FieldSpec("user_segment", 60, "user", 0.30, 0.30),
    FieldSpec("item_id", NUM_ITEMS, "item", 0.45, 0.45),
    FieldSpec("item_category", 300, "item", 0.40, 0.40),
    FieldSpec("item_brand", 5_000, "item", 0.30, 0.30),
    FieldSpec("item_shop", 20_000, "item", 0.30, 0.40),
    FieldSpec("item_price_bucket", 20, "item", 0.10, 0.30),
    FieldSpec("campaign_id", 8_000, "item", 0.30, 0.30),
    FieldSpec("advertiser_id", 3_000, "item", 0.20, 0.20),
    FieldSpec("creative_id", 2 * NUM_ITEMS, "item", 0.40, 0.10),
    FieldSpec("hour", 24, "context", 0.10, 0.05),
    FieldSpec("weekday", 7, "context", 0.05, 0.05),
    FieldSpec("device_os", 6, "context", 0.10, 0.10),
    FieldSpec("network", 5, "context", 0.05, 0.05),
    FieldSpec("position", 10, "context", 0.60, 0.00),  # position bias: clicks only
    FieldSpec("page", 30, "context", 0.20, 0.10),
    FieldSpec("slot", 12, "context", 0.20, 0.00),
    FieldSpec("app_version", 40, "context", 0.05, 0.00),
    FieldSpec("region", 35, "context", 0.10, 0.10),
    FieldSpec("query_category", 500, "context", 0.20, 0.20),
    FieldSpec("ad_format", 6, "context", 0.20, 0.10),
    FieldSpec("recency_bucket", 12, "context", 0.20, 0.20),
)
DENSE = ("item_price", "user_activity", "user_hist_ctr")
LABELS = ("click", "conversion")
TRUTH = ("true_ctr", "true_cvr", "conversion_if_clicked")
# Interactions: (field a, field b, latent dim, click scale, cvr scale)
INTERACTIONS = (
    ("user_segment", "item_category", LATENT_DIM, 0.45, 0.45),
    ("user_id", "item_id", LATENT_DIM, 0.35, 0.35),
    ("query_category", "item_category", 4, 0.35, 0.30),
    ("hour", "item_category", 2, 0.15, 0.10),
    ("device_os", "ad_format", 2, 0.20, 0.00),
)
# Zipf exponents of the independently drawn fields (the rest derive from users and items).
CONTEXT_ZIPF = {"device_os": 1.2, "network": 0.8, "page": 1.1, "slot": 0.6, "app_version": 1.3,
                "region": 0.9, "query_category": 1.05, "ad_format": 0.9, "recency_bucket": 0.5}


def zipf_sampler(rng: np.random.Generator, vocab: int, exponent: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Draws ids in [0, vocab) with Zipf(exponent) popularity over a random id order."""
    weights = 1.0 / np.arange(1, vocab + 1) ** exponent
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    ids_by_rank = rng.permutation(vocab).astype(np.int32)

    def draw(r: np.random.Generator, n: int) -> np.ndarray:
        return ids_by_rank[np.searchsorted(cdf, r.random(n), side="right")]

    return draw


class FunnelWorld:
    """Fixed tables (attributes, effects, latents) from which impressions are drawn."""

    def __init__(self, seed: int, task_correlation: float, zipf_shift: float = 0.0):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        self.rho = task_correlation
        # `zipf_shift` changes only how impressions are drawn: a sampler's id order (its rng
        # draws) does not depend on the exponent, so every table below stays the same
        self.draw_user = zipf_sampler(rng, NUM_USERS, 1.05 + zipf_shift)
        self.draw_item = zipf_sampler(rng, NUM_ITEMS, 1.10 + zipf_shift)
        self.draw_context = {f: zipf_sampler(rng, _spec(f).vocab, a + zipf_shift) for f, a in CONTEXT_ZIPF.items()}
        # user attributes, derived from the user id
        self.user = {
            "user_age": rng.choice(8, NUM_USERS, p=_normalise([3, 12, 20, 18, 14, 12, 11, 10])),
            "user_gender": rng.choice(3, NUM_USERS, p=[0.48, 0.48, 0.04]),
            "user_city": zipf_sampler(rng, 400, 1.0)(rng, NUM_USERS),
            "user_level": rng.choice(10, NUM_USERS, p=_normalise(np.arange(10, 0, -1))),
            "user_segment": zipf_sampler(rng, 60, 0.8)(rng, NUM_USERS),
        }
        self.user_activity = rng.lognormal(1.0, 0.8, NUM_USERS)
        # item attributes, derived from the item id
        category = zipf_sampler(rng, 300, 0.9)(rng, NUM_ITEMS)
        campaign = rng.integers(0, 8_000, NUM_ITEMS)
        category_price = rng.normal(3.5, 1.0, 300)
        self.item_log_price = category_price[category] + rng.normal(0.0, 0.5, NUM_ITEMS)
        edges = np.quantile(self.item_log_price, np.linspace(0, 1, 21)[1:-1])
        self.item = {
            "item_category": category,
            "item_brand": zipf_sampler(rng, 5_000, 1.0)(rng, NUM_ITEMS),
            "item_shop": rng.integers(0, 20_000, NUM_ITEMS),
            "item_price_bucket": np.searchsorted(edges, self.item_log_price),
            "campaign_id": campaign,
            "advertiser_id": rng.integers(0, 3_000, 8_000)[campaign],
        }
        self.price_mean, self.price_std = self.item_log_price.mean(), self.item_log_price.std()
        # first-order effects: a click effect and a correlated own-conversion effect per value
        self.click_effect, self.cvr_effect = {}, {}
        for spec in FIELDS:
            shared, own = rng.standard_normal(spec.vocab), rng.standard_normal(spec.vocab)
            self.click_effect[spec.name] = spec.click_scale * shared
            self.cvr_effect[spec.name] = spec.cvr_scale * self._correlate(shared, own)
        # interaction latents, correlated between the tasks the same way
        self.latent_click, self.latent_cvr = {}, {}
        for a, b, dim, click_scale, cvr_scale in INTERACTIONS:
            for name in (a, b):
                shared = rng.standard_normal((_spec(name).vocab, dim)) / dim ** 0.25
                own = rng.standard_normal((_spec(name).vocab, dim)) / dim ** 0.25
                self.latent_click[(a, b, name)] = shared
                self.latent_cvr[(a, b, name)] = self._correlate(shared, own)
        self.hour_weights = _normalise(2.0 + np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False) - 2.0))
        self.position_weights = _normalise(0.75 ** np.arange(10))

    def _correlate(self, shared: np.ndarray, own: np.ndarray) -> np.ndarray:
        return self.rho * shared + math.sqrt(max(0.0, 1.0 - self.rho ** 2)) * own

    def draw_fields(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Raw ids (0-based) of every field for n impressions."""
        users, items = self.draw_user(rng, n), self.draw_item(rng, n)
        fields = {"user_id": users, "item_id": items}
        fields.update({name: table[users] for name, table in self.user.items()})
        fields.update({name: table[items] for name, table in self.item.items()})
        fields["creative_id"] = 2 * items + rng.integers(0, 2, n)
        fields["hour"] = rng.choice(24, n, p=self.hour_weights)
        fields["weekday"] = rng.integers(0, 7, n)
        fields["position"] = rng.choice(10, n, p=self.position_weights)
        for name, draw in self.draw_context.items():
            fields[name] = draw(rng, n)
        return {spec.name: fields[spec.name].astype(np.int32) for spec in FIELDS}

    def dense_features(self, rng: np.random.Generator, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users, items = fields["user_id"], fields["item_id"]
        price = (self.item_log_price[items] - self.price_mean) / self.price_std
        activity = np.log1p(rng.poisson(self.user_activity[users]))
        user_click = sum(self.click_effect[f][fields[f]] for f in ("user_id", *self.user))
        hist_ctr = user_click + rng.normal(0.0, 0.5, len(users))  # a noisy history feature
        return {"item_price": price, "user_activity": activity, "user_hist_ctr": hist_ctr}

    def logits(self, fields: dict[str, np.ndarray], dense: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Unstandardised (g_click, g_cvr) for each impression."""
        g_click = sum(self.click_effect[f][ids] for f, ids in fields.items())
        g_cvr = sum(self.cvr_effect[f][ids] for f, ids in fields.items())
        for a, b, dim, click_scale, cvr_scale in INTERACTIONS:
            for latent, scale, target in ((self.latent_click, click_scale, "click"),
                                          (self.latent_cvr, cvr_scale, "cvr")):
                if scale == 0.0:
                    continue
                term = scale * np.einsum(
                    "nd,nd->n", latent[(a, b, a)][fields[a]], latent[(a, b, b)][fields[b]]
                )
                if target == "click":
                    g_click = g_click + term
                else:
                    g_cvr = g_cvr + term
        g_click = g_click + 0.10 * dense["user_activity"] - 0.10 * dense["item_price"]
        g_cvr = g_cvr - 0.30 * dense["item_price"]
        return g_click, g_cvr


def _spec(name: str) -> FieldSpec:
    return next(s for s in FIELDS if s.name == name)


def _normalise(weights) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_offset(rate_of: Callable[[float], float], target: float) -> float:
    """Bisection for the intercept α with rate_of(α) = target (rate_of increases in α)."""
    lo, hi = -20.0, 20.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rate_of(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass
class Calibration:
    mean_click: float
    std_click: float
    mean_cvr: float
    std_cvr: float
    alpha_click: float
    alpha_cvr: float


class SyntheticFunnel:
    """Generates the funnel for a `SyntheticFunnelConfig` and a seed."""

    def __init__(self, knobs, seed: int):
        self.knobs, self.seed = knobs, seed
        self.world = FunnelWorld(seed, knobs.task_correlation, knobs.zipf_shift)
        self.calibration = self._calibrate()

    def _calibrate(self) -> Calibration:
        """Intercepts and standardisation from the unshifted world, so that `zipf_shift`
        is a pure covariate shift: P(click, conversion | features) stays the same."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1]))
        world = FunnelWorld(self.seed, self.knobs.task_correlation) if self.knobs.zipf_shift else self.world
        fields = world.draw_fields(rng, CALIBRATION_ROWS)
        g_click, g_cvr = world.logits(fields, world.dense_features(rng, fields))
        k = self.knobs
        mc, sc, mv, sv = g_click.mean(), g_click.std(), g_cvr.mean(), g_cvr.std()
        z_click, z_cvr = (g_click - mc) / sc, (g_cvr - mv) / sv
        alpha_click = _solve_offset(lambda a: _sigmoid(a + k.ctr_signal * z_click).mean(), k.click_rate)
        p_click = _sigmoid(alpha_click + k.ctr_signal * z_click)
        cvr_part = k.cvr_signal * z_cvr + k.selection_bias * z_click

        def post_click_rate(a: float) -> float:
            return float((p_click * _sigmoid(a + cvr_part)).sum() / p_click.sum())

        alpha_cvr = _solve_offset(post_click_rate, k.conversion_rate)
        return Calibration(float(mc), float(sc), float(mv), float(sv), alpha_click, alpha_cvr)

    def chunk(self, index: int, rows: int) -> dict[str, np.ndarray]:
        """All columns (encoded ids, dense, labels, truth, split) of one chunk of rows."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2, index]))
        k, c = self.knobs, self.calibration
        fields = self.world.draw_fields(rng, rows)
        dense = self.world.dense_features(rng, fields)
        g_click, g_cvr = self.world.logits(fields, dense)
        z_click, z_cvr = (g_click - c.mean_click) / c.std_click, (g_cvr - c.mean_cvr) / c.std_cvr
        true_ctr = _sigmoid(c.alpha_click + k.ctr_signal * z_click)
        true_cvr = _sigmoid(c.alpha_cvr + k.cvr_signal * z_cvr + k.selection_bias * z_click)
        click = rng.random(rows) < true_ctr
        conversion_if_clicked = rng.random(rows) < true_cvr
        u = rng.random(rows)
        split = np.where(u < k.valid_fraction, 1, np.where(u < k.valid_fraction + k.test_fraction, 2, 0))
        columns: dict[str, np.ndarray] = {name: ids + 1 for name, ids in fields.items()}
        columns.update({name: values.astype(np.float32) for name, values in dense.items()})
        columns["click"] = click.astype(np.int8)
        columns["conversion"] = (click & conversion_if_clicked).astype(np.int8)
        columns["true_ctr"] = true_ctr.astype(np.float32)
        columns["true_cvr"] = true_cvr.astype(np.float32)
        columns["conversion_if_clicked"] = conversion_if_clicked.astype(np.int8)
        columns["_split"] = split.astype(np.int8)
        return columns

    def schema(self, split_rows: dict[str, int]) -> DatasetSchema:
        return DatasetSchema(
            name="synthetic_funnel",
            source="synthetic",
            sparse=[SparseField(s.name, s.vocab + 1, s.entity) for s in FIELDS],
            dense=[DenseField(name) for name in DENSE],
            labels=list(LABELS),
            tasks=list(FUNNEL_TASKS),
            user_field="user_id",
            truth=list(TRUTH),
            split_rows=split_rows,
            meta={"generator_version": GENERATOR_VERSION, "seed": self.seed,
                  "knobs": self.knobs.model_dump(), "calibration": vars(self.calibration)},
        )

    def write(self, directory: Path, progress: Callable[[int], None] | None = None) -> DatasetSchema:
        """Write the three splits as Parquet plus schema.json and vocab.json into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        writers: dict[str, pq.ParquetWriter] = {}
        split_rows = dict.fromkeys(SPLITS, 0)
        done = 0
        try:
            for index, start in enumerate(range(0, self.knobs.rows, CHUNK_ROWS)):
                rows = min(CHUNK_ROWS, self.knobs.rows - start)
                columns = self.chunk(index, rows)
                split = columns.pop("_split")
                for code, name in enumerate(SPLITS):
                    mask = split == code
                    table = pa.table({k: v[mask] for k, v in columns.items()})
                    if name not in writers:
                        writers[name] = pq.ParquetWriter(directory / f"{name}.parquet", table.schema)
                    writers[name].write_table(table)
                    split_rows[name] += int(mask.sum())
                done += rows
                if progress:
                    progress(done)
        finally:
            for writer in writers.values():
                writer.close()
        schema = self.schema(split_rows)
        schema.save(directory)
        write_feature_definitions(directory)
        return schema


def feature_set() -> FeatureSet:
    """The generator's fields as feature definitions: raw ids in [0, vocab) (`identity`,
    stored as id + 1, 0 = missing) and dense values as generated (`none`), so a served
    request carries the same raw values a log of this funnel would."""
    specs = [FeatureSpec(name=s.name, type="categorical", entity=s.entity,
                         transformation=Transformation(kind="identity", size=s.vocab)) for s in FIELDS]
    specs += [FeatureSpec(name=name, type="numeric", transformation=Transformation(kind="none")) for name in DENSE]
    return FeatureSet(features=specs)


def write_feature_definitions(directory: Path) -> None:
    """features.json and vocab.json: what serving and monitoring read to encode raw rows."""
    FeaturePipeline(feature_set()).save(directory)


def dataset_key(knobs, seed: int) -> str:
    """A short hash naming the cached dataset for these knobs and seed."""
    payload = json.dumps({"v": GENERATOR_VERSION, "seed": seed, "knobs": knobs.model_dump()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
