"""The prepared sequence dataset: the sorted interaction log plus candidate rows.

Directory:
    interactions.parquet        the log (recsmith.data.sequences), split leave-last-out
    {train,valid,test}.parquet  candidate rows: per target event its true item (label
                                `like` = rating ≥ positive_rating) and `negatives` items
                                the user never rated (label 0), with the explicit features
    attributes.npz              user and item side information by code (for features of any pair)
    schema.json, vocab.json     fields, labels, meta; raw user / item ids by code
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsmith.atomic import write_json_atomic
from recsmith.data.schema import SPLITS, VOCAB_FILE, DatasetSchema, DenseField, SparseField
from recsmith.data.seq_features import CATEGORICAL, NUMERIC, Attributes, FeatureBuilder
from recsmith.data.sequences import InteractionLog, build_log, sample_unrated
from recsmith.errors import DataError
from recsmith.tasks import TaskSpec

LIKE = TaskSpec("like", label="like")
ATTRIBUTES_FILE = "attributes.npz"


def attributes(users: pa.Table, items: pa.Table, genre_flags: np.ndarray, user_ids: np.ndarray,
               item_ids: np.ndarray) -> Attributes:
    """Side information aligned to the codes of `build_log` (row 0 = unknown)."""
    def by_code(table: pa.Table, key: str, ids: np.ndarray, column: str) -> np.ndarray:
        position = {v: i for i, v in enumerate(table[key].to_pylist())}
        values = table[column].to_pylist()
        return [values[position[i]] if i in position else None for i in ids.tolist()]

    def codes(values: list) -> np.ndarray:
        vocab = {v: i + 1 for i, v in enumerate(sorted({v for v in values if v is not None}, key=str))}
        return np.array([0] + [vocab.get(v, 0) for v in values], np.int64)

    def floats(values: list) -> np.ndarray:
        return np.array([np.nan] + [np.nan if v is None else float(v) for v in values], np.float64)

    row = {v: i for i, v in enumerate(items["item"].to_pylist())}
    flags = np.zeros((len(item_ids) + 1, genre_flags.shape[1]), np.float32)
    for code, raw in enumerate(item_ids.tolist(), start=1):
        if raw in row:
            flags[code] = genre_flags[row[raw]]
    first = np.where(flags.any(1), flags.argmax(1) + 1, 0)
    return Attributes(gender=codes(by_code(users, "user", user_ids, "gender")),
                      occupation=codes(by_code(users, "user", user_ids, "occupation")),
                      age=floats(by_code(users, "user", user_ids, "age")),
                      year=floats(by_code(items, "item", item_ids, "year")),
                      genre_flags=flags, genre=first.astype(np.int64))


def candidate_rows(log: InteractionLog, split: str, negatives: int, positive_rating: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(event, candidate item, like label) for every target event of `split`."""
    events = log.targets(split)
    others = sample_unrated(log, log.user[events], negatives, rng)  # [N, k]
    candidates = np.concatenate([log.item[events][:, None], others], axis=1)  # [N, 1 + k]
    like = np.zeros(candidates.shape, np.int8)
    like[:, 0] = log.rating[events] >= positive_rating
    return np.repeat(events, negatives + 1), candidates.ravel(), like.ravel()


def write_sequence_dataset(name: str, ratings: pa.Table, users: pa.Table, items: pa.Table, genre_flags: np.ndarray,
                           history: str, negatives: int, positive_rating: int, seed: int, staging: Path) -> DatasetSchema:
    """Build the whole dataset into `staging` (ratings: user, item, rating, ts, __line__)."""
    log, user_ids, item_ids = build_log(
        ratings["user"].to_numpy(), ratings["item"].to_numpy(), ratings["ts"].to_numpy(),
        ratings["rating"].to_numpy(), ratings["__line__"].to_numpy(), items["item"].to_numpy(), history)
    attrs = attributes(users, items, genre_flags, user_ids, item_ids)
    builder = FeatureBuilder(log, attrs)
    staging.mkdir(parents=True)
    log.save(staging)
    np.savez(staging / ATTRIBUTES_FILE, **{f: getattr(attrs, f) for f in Attributes.__dataclass_fields__})
    rng = np.random.default_rng(seed)
    rows = {}
    for split in SPLITS:
        events, candidates, like = candidate_rows(log, split, negatives, positive_rating, rng)
        table = {"event": events, "like": like, **builder.features(events, candidates)}
        pq.write_table(pa.table(table), staging / f"{split}.parquet")
        rows[split] = len(events)
    sizes = {"user_id": log.num_users + 1, "item_id": log.num_items + 1, **attrs.vocab_sizes()}
    write_json_atomic(staging / VOCAB_FILE, {"user_id": [None, *user_ids.tolist()],
                                             "item_id": [None, *item_ids.tolist()]})
    schema = DatasetSchema(
        name=name, source=name, sparse=[SparseField(n, sizes[n]) for n in CATEGORICAL],
        dense=[DenseField(n) for n in NUMERIC], labels=["like"], tasks=[LIKE], user_field="user_id",
        split_rows=rows,
        meta={"view": "sequence", "num_users": log.num_users, "num_items": log.num_items, "interactions": len(log),
              "history": history, "positive_rating": positive_rating, "negatives_per_target": negatives,
              "seed": seed, "split_rule": "leave-last-out by time: per user the last interaction is test, "
                                          "the second-to-last valid, the rest train (ties by line in the file)",
              "candidate_rows": "per target event: its true item (like = rating ≥ positive_rating) and "
                                "negatives_per_target items the user never rated (like = 0)"},
    )
    schema.save(staging)
    return schema


@dataclass
class SequenceDataset:
    """A prepared sequence dataset, loaded."""

    directory: Path
    schema: DatasetSchema
    log: InteractionLog

    @classmethod
    def load(cls, directory: str | Path) -> "SequenceDataset":
        directory = Path(directory)
        schema = DatasetSchema.load(directory)
        if schema.meta.get("view") != "sequence":
            raise DataError(f"{directory}: not a sequence dataset (prepare it with data.options.view: sequence)")
        return cls(directory, schema, InteractionLog.load(directory, schema.meta["num_items"]))

    def candidates(self, split: str, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """The candidate rows of `split` as numpy columns."""
        path = self.directory / f"{split}.parquet"
        if not path.is_file():
            raise DataError(f"split file not found: {path}")
        table = pq.read_table(path, columns=columns)
        return {name: table[name].to_numpy() for name in table.column_names}

    def feature_builder(self) -> FeatureBuilder:
        """Explicit features of any (event, item) pair, as in the candidate rows."""
        with np.load(self.directory / ATTRIBUTES_FILE) as arrays:
            return FeatureBuilder(self.log, Attributes(**{name: arrays[name] for name in arrays.files}))

    def raw_ids(self) -> dict[str, list]:
        return json.loads((self.directory / VOCAB_FILE).read_text())
