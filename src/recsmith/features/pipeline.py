"""The one code path from raw columns to model inputs, shared by prepare and serving."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsmith.atomic import write_json_atomic
from recsmith.errors import ConfigError, DataError
from recsmith.features.definitions import FeatureSet
from recsmith.features.encoders import build_encoder
from recsmith.features.fields import VOCAB_FILE, DenseField, SparseField

FEATURES_FILE = "features.json"  # the definitions, beside vocab.json (the fitted encoders)
DESCRIPTIVE = {"owner", "tags", "description"}  # free to change between model updates: no effect on encoding

ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
# A raw column read by several features takes the widest of their types: every encoder
# reads text that holds a number, but not the other way round.
RAW_TYPE_WIDTH = (pa.int64(), pa.float64(), pa.string())


def wrong_type(spec, exc: Exception) -> DataError:
    return DataError(f"column '{spec.column}' (feature {spec.name}): values of the wrong type ({exc})")


class FeaturePipeline:
    """Encoders for a FeatureSet: `fit` on training chunks, `finish`, then `transform`."""

    def __init__(self, features: FeatureSet, states: dict | None = None):
        self.features = features
        self.encoders = {f.name: build_encoder(f, (states or {}).get(f.name)) for f in features.features}

    # ------------------------------------------------------------------ fitting
    def fit(self, table: pa.Table) -> None:
        self._check_columns(table)
        for spec in self.features.features:
            self.encoders[spec.name].fit(table.column(spec.column))

    def finish(self) -> None:
        for encoder in self.encoders.values():
            encoder.finish()

    # --------------------------------------------------------------- applying
    def invalid_rows(self, table: pa.Table) -> tuple[np.ndarray, list[str]]:
        """(mask of malformed rows, a reason per malformed row), e.g. ids out of range."""
        self._check_columns(table)
        bad = np.zeros(table.num_rows, bool)
        reasons = np.full(table.num_rows, "", dtype=object)
        for spec in self.features.features:
            try:
                mask = self.encoders[spec.name].invalid(table.column(spec.column))
            except ARROW_ERRORS as exc:
                raise wrong_type(spec, exc) from None
            if mask is not None and mask.any():
                fresh = mask & ~bad
                reasons[fresh] = f"{spec.column}: out of range for {spec.name}"
                bad |= mask
        return bad, list(reasons[bad])

    def transform(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Encoded columns by feature name: int32 ids (categorical), float32 (numeric)."""
        self._check_columns(table)
        encoded = {}
        for spec in self.features.features:
            try:
                encoded[spec.name] = self.encoders[spec.name].transform(table.column(spec.column))
            except ARROW_ERRORS as exc:
                raise wrong_type(spec, exc) from None
        return encoded

    def transform_records(self, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Raw records (as served) → (sparse [N, F] int32, dense [N, D] float32) model inputs.
        A missing or unseen value becomes id 0 (categorical) or the fill value (numeric)."""
        columns = {c: [r.get(c) for r in records] for c in self.features.columns}
        encoded = self.transform(pa.table({c: pa.array(v) for c, v in columns.items()}))
        sparse = np.stack([encoded[f.name] for f in self.features.categorical], axis=1) if self.features.categorical \
            else np.zeros((len(records), 0), np.int32)
        dense = np.stack([encoded[f.name] for f in self.features.numeric], axis=1) if self.features.numeric \
            else np.zeros((len(records), 0), np.float32)
        return sparse, dense

    def _check_columns(self, table: pa.Table) -> None:
        present = set(table.column_names)  # a new list on every access: read it once
        missing = [c for c in self.features.columns if c not in present]
        if missing:
            raise DataError(f"input lacks the columns the feature definitions read: {', '.join(missing)}")

    @cached_property
    def raw_schema(self) -> pa.Schema:
        """The Arrow type of every raw column (`features.columns`), as the feature definitions
        imply it: text for a vocabulary, int64 for identity ids, float64 for numbers. Serving
        casts each request to it, so every logged request has one schema."""
        types: dict[str, pa.DataType] = {}
        for spec in self.features.features:
            wanted = self.encoders[spec.name].raw_type
            held = types.get(spec.column)
            if held is None or RAW_TYPE_WIDTH.index(wanted) > RAW_TYPE_WIDTH.index(held):
                types[spec.column] = wanted
        return pa.schema([(column, types[column]) for column in self.features.columns])

    # ---------------------------------------------------------------- schema
    def sparse_fields(self) -> list[SparseField]:
        return [SparseField(f.name, self.encoders[f.name].size, f.entity) for f in self.features.categorical]

    def dense_fields(self) -> list[DenseField]:
        return [DenseField(f.name) for f in self.features.numeric]

    # ------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        write_json_atomic(directory / FEATURES_FILE, self.features.model_dump(mode="json"))
        states = {name: {"kind": enc.t.kind, "size": enc.size if enc.categorical else None, **enc.state()}
                  for name, enc in self.encoders.items()}
        write_json_atomic(directory / VOCAB_FILE, states)

    @classmethod
    def load(cls, directory: str | Path) -> "FeaturePipeline":
        directory = Path(directory)
        try:
            features = FeatureSet.model_validate(json.loads((directory / FEATURES_FILE).read_text()))
            states = json.loads((directory / VOCAB_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{directory}: no readable feature definitions and encoders ({exc})") from None
        return cls(features, states)

    @classmethod
    def extending(cls, features: FeatureSet, base: str | Path) -> "FeaturePipeline":
        """Encoders starting from those fitted in the prepared dataset `base` (a model
        update): fitting extends them (vocabularies append new values; every other
        encoder keeps its state). `features` must define what the base's definitions
        define (owner, tags and description may differ); a ConfigError names the rest."""
        fitted = cls.load(base)
        differences = definition_differences(fitted.features, features)
        if differences:
            raise ConfigError(f"data.extend_vocab_from: the feature definitions differ from those {base} was "
                              f"prepared with: {'; '.join(differences)}")
        return cls(features, {name: encoder.state() for name, encoder in fitted.encoders.items()})


def definition_differences(old: FeatureSet, new: FeatureSet) -> list[str]:
    """What differs between two feature sets, one phrase per difference (empty: the same)."""
    before = {f.name: f.model_dump(mode="json", exclude=DESCRIPTIVE) for f in old.features}
    after = {f.name: f.model_dump(mode="json", exclude=DESCRIPTIVE) for f in new.features}
    found = []
    if set(after) - set(before):
        found.append(f"new features {', '.join(n for n in after if n not in before)}")
    if set(before) - set(after):
        found.append(f"missing features {', '.join(n for n in before if n not in after)}")
    for name in (n for n in after if n in before and after[n] != before[n]):
        keys = [k for k in after[name] if after[name][k] != before[name].get(k)]
        found.append(", ".join(f"{name}.{k} {before[name].get(k)!r} → {after[name][k]!r}" for k in keys))
    if not found and list(before) != list(after):
        found.append(f"the same features in another order (was {', '.join(before)})")
    return found
