"""Fitted encoders: one per feature, fitted on the training split in streamed chunks,
saved as JSON in the dataset dir, and applied the same way at prepare and serving time.

Categorical encoders return int32 ids in [0, size) with 0 = missing / unseen; numeric
encoders return float32.

An encoder built from a saved state is already fitted. Fitting it again extends it (a
model update on newer data): a `vocab` keeps every known value at its id and appends the
new ones; every other encoder keeps its fitted state, so a model's inputs mean what they
meant when its weights were trained.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsmith.features.definitions import FeatureSpec
from recsmith.registry import Registry

ENCODERS: Registry[type] = Registry("transformation")
RESERVOIR = 1_000_000  # values kept for quantile fitting (a seeded uniform sample)


def as_float(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 values with NaN for nulls."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        # numbers convert directly (nulls → NaN), several times faster than a cast kernel
        # on the small batches a scoring request carries
        return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


class Encoder:
    """fit(column) on training chunks, finish(), then transform(column) -> numpy."""

    categorical = True
    raw_type: pa.DataType  # the Arrow type a raw column is read as (a request is cast to it)

    def __init__(self, spec: FeatureSpec, state: dict | None = None):
        self.spec, self.t = spec, spec.transformation
        self.loaded = state is not None  # fitted already: fit() only extends (see the module docstring)
        if state is not None:
            self.load(state)

    def fit(self, column) -> None:  # most encoders need no fitting
        pass

    def finish(self) -> None:
        pass

    def invalid(self, column) -> np.ndarray | None:
        """A mask of rows this encoder rejects (malformed), or None."""
        return None

    @property
    def size(self) -> int:  # categorical: number of ids including 0
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load(self, state: dict) -> None:
        pass


@ENCODERS.register("vocab")
class VocabEncoder(Encoder):
    """Values seen at least `min_count` times in training, most frequent first; id 0 otherwise.

    Fitted from a saved state (a model update), the known values keep their ids and the
    values new in this data (seen at least `min_count` times, most frequent first) are
    appended after them; `max_size` then caps only how many new values are added.
    """

    raw_type = pa.string()  # the fitted values are text; ids and names alike are matched as text

    def __init__(self, spec, state=None):
        self.counts: pa.Table | None = None
        self.values: pa.Array = pa.array([], pa.string())
        super().__init__(spec, state)

    def fit(self, column) -> None:
        counted = pc.value_counts(pc.cast(column, pa.string()).drop_null())
        chunk = pa.table({"value": counted.field("values"), "count": pc.cast(counted.field("counts"), pa.int64())})
        merged = chunk if self.counts is None else pa.concat_tables([self.counts, chunk])
        self.counts = merged.group_by("value").aggregate([("count", "sum")]).rename_columns(["value", "count"])

    def finish(self) -> None:
        if self.counts is None:
            return
        kept = self.counts.filter(pc.greater_equal(self.counts["count"], self.t.min_count))
        kept = kept.filter(pc.invert(pc.is_in(kept["value"], value_set=self.values)))  # new values only
        kept = kept.sort_by([("count", "descending"), ("value", "ascending")])
        if self.t.max_size is not None:
            kept = kept.slice(0, self.t.max_size)
        self.values = pa.concat_arrays([self.values, kept["value"].combine_chunks().cast(pa.string())])
        self.counts = None

    @property
    def size(self) -> int:
        return len(self.values) + 1

    def transform(self, column) -> np.ndarray:
        index = pc.index_in(pc.cast(column, pa.string()), value_set=self.values)
        return pc.fill_null(pc.add(index, 1), 0).to_numpy(zero_copy_only=False).astype(np.int32)

    def state(self) -> dict:
        return {"values": self.values.to_pylist()}

    def load(self, state: dict) -> None:
        self.values = pa.array(state["values"], pa.string())


@ENCODERS.register("identity")
class IdentityEncoder(Encoder):
    """Integer ids already in [0, size): id + 1; missing → 0; out of range is malformed."""

    raw_type = pa.int64()

    @property
    def size(self) -> int:
        return self.t.size + 1

    def invalid(self, column) -> np.ndarray:
        values = as_float(column)
        present = ~np.isnan(values)
        bad = np.zeros(len(values), bool)
        bad[present] = (values[present] < 0) | (values[present] >= self.t.size) | (values[present] % 1 != 0)
        return bad

    def transform(self, column) -> np.ndarray:
        values = as_float(column)
        return np.where(np.isnan(values), 0, values + 1).astype(np.int32)


@ENCODERS.register("bucketize")
class BucketEncoder(Encoder):
    """Numeric values cut at boundaries (given, or quantiles of a training sample);
    bucket ids 1..len(boundaries)+1, missing → 0."""

    raw_type = pa.float64()

    def __init__(self, spec, state=None):
        self.boundaries = list(spec.transformation.boundaries or [])
        # bottom-k sampling: every value gets a random key, the RESERVOIR smallest keys stay,
        # which is a uniform sample of everything seen, in bounded memory
        self.sample, self.keys = np.empty(0), np.empty(0)
        self.rng = np.random.default_rng(0)
        super().__init__(spec, state)

    def fit(self, column) -> None:
        if self.t.boundaries is not None or self.loaded:
            return
        values = _scaled(as_float(column), self.t.log1p)
        values = values[np.isfinite(values)]
        self.sample = np.concatenate([self.sample, values])
        self.keys = np.concatenate([self.keys, self.rng.random(len(values))])
        if len(self.sample) > RESERVOIR:
            kept = np.argpartition(self.keys, RESERVOIR)[:RESERVOIR]
            self.sample, self.keys = self.sample[kept], self.keys[kept]

    def finish(self) -> None:
        if self.t.boundaries is not None:
            return
        if self.sample.size:
            cuts = np.quantile(self.sample, np.linspace(0, 1, self.t.num_buckets + 1)[1:-1])
            self.boundaries = sorted(set(float(c) for c in cuts))
        self.sample, self.keys = np.empty(0), np.empty(0)

    @property
    def size(self) -> int:
        return len(self.boundaries) + 2

    def transform(self, column) -> np.ndarray:
        values = _scaled(as_float(column), self.t.log1p)
        ids = np.searchsorted(np.asarray(self.boundaries), values, side="right") + 1
        return np.where(np.isnan(values), 0, ids).astype(np.int32)

    def state(self) -> dict:
        return {"boundaries": self.boundaries}

    def load(self, state: dict) -> None:
        self.boundaries = list(state["boundaries"])


class _NumericEncoder(Encoder):
    categorical = False
    raw_type = pa.float64()

    def __init__(self, spec, state=None):
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf
        self.offset, self.scale = 0.0, 1.0
        super().__init__(spec, state)

    def fit(self, column) -> None:
        if self.loaded:
            return
        values = _scaled(as_float(column), self.t.log1p)
        values = values[np.isfinite(values)]
        if values.size:
            self.count += values.size
            self.total += float(values.sum())
            self.squares += float((values * values).sum())
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))

    def invalid(self, column) -> np.ndarray:
        """Values whose encoding is finite in float64 but overflows the model's float32 (1e308,
        or a small scale blowing a large value up): the model would see inf. What is not finite
        in float64 already (NaN, inf, log1p of -2) counts as missing, as in `transform`."""
        encoded = self._encode(as_float(column))
        with np.errstate(over="ignore"):
            return np.isfinite(encoded) & np.isinf(encoded.astype(np.float32))

    def transform(self, column) -> np.ndarray:
        values = self._encode(as_float(column))
        return np.where(np.isfinite(values), values, self.t.fill).astype(np.float32)

    def _encode(self, raw: np.ndarray) -> np.ndarray:
        return (_scaled(raw, self.t.log1p) - self.offset) / self.scale

    def state(self) -> dict:
        return {"offset": self.offset, "scale": self.scale}

    def load(self, state: dict) -> None:
        self.offset, self.scale = float(state["offset"]), float(state["scale"])


@ENCODERS.register("standardize")
class Standardizer(_NumericEncoder):
    def finish(self) -> None:
        if self.count:
            mean = self.total / self.count
            std = math.sqrt(max(self.squares / self.count - mean * mean, 0.0))
            self.offset, self.scale = mean, std if std > 1e-12 else 1.0


@ENCODERS.register("minmax")
class MinMaxScaler(_NumericEncoder):
    def finish(self) -> None:
        if self.count:
            self.offset = self.low
            self.scale = self.high - self.low if self.high > self.low else 1.0


@ENCODERS.register("none")
class Passthrough(_NumericEncoder):
    pass


def _scaled(values: np.ndarray, log1p: bool) -> np.ndarray:
    if not log1p:
        return values
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log1p(values)


def build_encoder(spec: FeatureSpec, state: dict | None = None) -> Encoder:
    return ENCODERS.get(spec.transformation.kind, f"features.{spec.name}.transformation.kind")(spec, state)
