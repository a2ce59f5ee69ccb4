"""Prepare a tabular source into a dataset directory, in two streamed passes:
1. read raw chunks, drop malformed rows (logged to rejects.jsonl with their line numbers),
   assign splits, fit the feature encoders on the training rows;
2. read again, encode every row with the fitted encoders, write one Parquet file per split.
Memory stays bounded by the chunk size (plus the fitted vocabularies).

Every source module (Ali-CCP, MovieLens, Census-Income, generic CSV/Parquet) only has to
yield raw chunks; this module owns encoding, splitting, rejects and the output format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsmith.data.schema import SCHEMA_FILE, SPLITS, DatasetSchema
from recsmith.errors import DataError
from recsmith.features.definitions import FeatureSet
from recsmith.features.pipeline import FeaturePipeline
from recsmith.tasks import TaskSpec

LINE, SPLIT = "__line__", "__split__"  # reader-supplied columns: line number, optional split
REJECTS_FILE = "rejects.jsonl"


class SplitRule(BaseModel):
    """How rows are assigned to train / valid / test.

    random:   by a hash of (file, line), so every pass and any chunking agree;
    column:   a column holding train / valid / test;
    provided: the reader says train or test; valid is carved from train at random.
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["random", "column", "provided"] = "random"
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    column: Optional[str] = None
    seed: int = 20260127

    @model_validator(mode="after")
    def _leaves_training_rows(self):
        if self.kind == "random" and self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"valid_fraction + test_fraction is {self.valid_fraction + self.test_fraction:g}, "
                             "which leaves no rows to train on (it must be < 1)")
        return self


@dataclass
class Chunk:
    table: pa.Table  # raw columns, LINE (int64), optionally SPLIT (string)
    file: str


@dataclass
class TabularSpec:
    """What a source produces: features, labels and tasks, and how to split."""

    name: str
    source: str
    features: FeatureSet
    labels: dict[str, str]  # dataset label name -> raw column
    tasks: list[TaskSpec]
    user_field: Optional[str] = None
    split: SplitRule = field(default_factory=SplitRule)
    meta: dict = field(default_factory=dict)


class RejectLog:
    """Malformed rows: counted, and written with file, line number, reason and raw text."""

    def __init__(self, path: Path | None):
        self.path, self.count = path, 0
        self.first: str | None = None  # "file line N: reason" of the first reject, for error messages
        self._handle = open(path, "w", encoding="utf-8") if path else None

    def add(self, file: str, line: int, reason: str, raw: str = "") -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{file} line {int(line)}: {reason}"
        if self._handle:
            self._handle.write(json.dumps({"file": file, "line": int(line), "reason": reason,
                                           "raw": raw[:300]}) + "\n")

    def close(self) -> None:
        if self._handle:
            self._handle.close()


Reader = Callable[[RejectLog], Iterator[Chunk]]
Progress = Optional[Callable[[int, int], None]]


def _uniform(lines: np.ndarray, file: str, seed: int) -> np.ndarray:
    """A deterministic uniform [0, 1) value per (file, line): splitmix64 of both."""
    salt = np.uint64(int.from_bytes(hashlib.sha256(f"{seed}:{file}".encode()).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        z = lines.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def assign_splits(chunk: Chunk, table: pa.Table, rule: SplitRule) -> np.ndarray:
    """Split codes (0 train, 1 valid, 2 test) for the rows of `table`."""
    n = table.num_rows
    if rule.kind == "column":
        values = np.array(table.column(rule.column).to_pylist(), dtype=object)
        codes = np.full(n, -1)
        for code, name in enumerate(SPLITS):
            codes[values == name] = code
        return codes
    u = _uniform(table.column(LINE).to_numpy(), chunk.file, rule.seed)
    if rule.kind == "provided":
        provided = np.array(table.column(SPLIT).to_pylist(), dtype=object)
        return np.where(provided == "test", 2, np.where(u < rule.valid_fraction, 1, 0))
    return np.where(u < rule.valid_fraction, 1, np.where(u < rule.valid_fraction + rule.test_fraction, 2, 0))


class _Validator:
    """Drops malformed rows: encoder range checks, labels that are not 0/1, a label
    observed where its task says it cannot be (e.g. a conversion without a click)."""

    def __init__(self, spec: TabularSpec, pipeline: FeaturePipeline):
        self.spec, self.pipeline = spec, pipeline

    def __call__(self, chunk: Chunk, rejects: RejectLog) -> tuple[pa.Table, dict[str, np.ndarray]]:
        table = chunk.table
        missing = [c for c in self.spec.labels.values() if c not in table.column_names]
        if missing:
            raise DataError(f"{chunk.file}: no label column {', '.join(missing)}")
        bad, reasons = self.pipeline.invalid_rows(table)
        reasons = dict(zip(np.flatnonzero(bad), reasons))
        labels = {}
        for name, column in self.spec.labels.items():
            values = pc.cast(table.column(column), pa.float64()).to_numpy(zero_copy_only=False)
            wrong = ~np.isin(values, (0.0, 1.0)) & ~bad
            reasons.update({i: f"label {column}: {values[i]:g} is not 0 or 1" for i in np.flatnonzero(wrong)})
            bad |= wrong
            labels[name] = values
        for task in self.spec.tasks:
            if task.observed_when:
                wrong = (labels[task.label] > labels[task.observed_when]) & ~bad
                reasons.update({i: f"{task.label} = 1 where {task.observed_when} = 0" for i in np.flatnonzero(wrong)})
                bad |= wrong
        if bad.any():
            lines = table.column(LINE).to_numpy()
            for i in np.flatnonzero(bad):
                rejects.add(chunk.file, lines[i], reasons[i])
        keep = ~bad
        return table.filter(pa.array(keep)), {k: v[keep].astype(np.int8) for k, v in labels.items()}


def prepare_tabular(spec: TabularSpec, read: Reader, out: Path, max_bad_rows: float,
                    progress: Progress = None, expected_rows: int = 0,
                    rejects_path: Path | None = None, base: Path | None = None) -> DatasetSchema:
    """Prepare into `out` (created; schema.json, written last, marks it complete).
    Rejected rows go to `rejects_path` (default out/rejects.jsonl). With `base` (a dataset
    prepared earlier with the same feature definitions: a model update) the encoders start
    from the base's and are extended, so known values keep their ids."""
    out.mkdir(parents=True, exist_ok=True)
    rejects_path = rejects_path or out / REJECTS_FILE
    pipeline = FeaturePipeline.extending(spec.features, base) if base else FeaturePipeline(spec.features)
    validate = _Validator(spec, pipeline)
    if spec.user_field and spec.user_field not in [f.name for f in spec.features.categorical]:
        raise DataError(f"user_field '{spec.user_field}' is not a categorical feature")
    rejects = RejectLog(rejects_path)
    parsed = 0  # rows the reader parsed; lines it rejected itself are in rejects.count
    files: dict[str, None] = {}  # what was read, in order: named when it held no rows
    try:  # pass 1: rejects, splits, fitting
        for chunk in read(rejects):
            files[str(chunk.file)] = None
            before = rejects.count
            table, _ = validate(chunk, rejects)
            parsed += chunk.table.num_rows - (rejects.count - before)
            total = parsed + rejects.count
            codes = assign_splits(chunk, table, spec.split)
            pipeline.fit(table.filter(pa.array(codes == 0)))
            if progress:
                progress(total, 2 * max(expected_rows, total))
    finally:
        rejects.close()
    total = parsed + rejects.count
    _check_rejects(rejects, total, max_bad_rows, ", ".join(files) or spec.meta.get("input", spec.name))
    pipeline.finish()

    writers: dict[str, pq.ParquetWriter] = {}
    split_rows = dict.fromkeys(SPLITS, 0)
    done = 0
    try:  # pass 2: encode and write
        silent = RejectLog(None)
        for chunk in read(silent):
            table, labels = validate(chunk, silent)
            codes = assign_splits(chunk, table, spec.split)
            encoded = pipeline.transform(table)
            columns = {**encoded, **labels}
            for code, name in enumerate(SPLITS):
                mask = codes == code
                if not mask.any():
                    continue
                part = pa.table({k: v[mask] for k, v in columns.items()})
                if name not in writers:
                    writers[name] = pq.ParquetWriter(out / f"{name}.parquet", part.schema)
                writers[name].write_table(part)
                split_rows[name] += int(mask.sum())
            done += chunk.table.num_rows
            if progress:
                progress(total + done, 2 * total)
    finally:
        for writer in writers.values():
            writer.close()
    empty = [name for name, rows in split_rows.items() if rows == 0]
    if empty:
        raise DataError(f"{spec.name}: the {', '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} "
                        f"empty after preparing {total:,} rows ({rejects.count:,} rejected)")
    pipeline.save(out)
    if rejects_path != out / REJECTS_FILE:
        shutil.copy(rejects_path, out / REJECTS_FILE)
    schema = DatasetSchema(
        name=spec.name, source=spec.source, sparse=pipeline.sparse_fields(), dense=pipeline.dense_fields(),
        labels=list(spec.labels), tasks=spec.tasks, user_field=spec.user_field, split_rows=split_rows,
        meta={**spec.meta, "rows_read": total, "rows_rejected": rejects.count,
              "split": spec.split.model_dump(), **({"extends_vocab_of": str(base)} if base else {})},
    )
    schema.save(out)
    return schema


def _check_rejects(rejects: RejectLog, total: int, max_bad_rows: float, read: str) -> None:
    if total == 0:
        raise DataError(f"{read}: no rows to prepare (rejected lines: {rejects.path})")
    share = rejects.count / total
    if share > max_bad_rows:
        raise DataError(f"{rejects.count:,} of {total:,} rows are malformed ({share:.2%}, more than "
                        f"--max-bad-rows {max_bad_rows:.2%}); the first: {rejects.first}; see {rejects.path}")


def prepare_cached(directory: Path, build: Callable[[Path, Path], None]) -> Path:
    """Build a dataset into a staging dir and rename it to `directory`, once.
    `build(staging, rejects_path)`; the rejects file sits beside the dataset, so it
    survives a failed build."""
    if (directory / SCHEMA_FILE).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build(staging, directory.with_name(f"{directory.name}.{REJECTS_FILE}"))
    finally:
        if not (staging / SCHEMA_FILE).is_file():
            shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.rename(directory)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / SCHEMA_FILE).is_file():
            raise
    return directory
