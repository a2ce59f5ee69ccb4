"""The dataset schema: every field named once, read by everything downstream.

A prepared dataset directory holds:
    schema.json                 this schema (fields, labels, truth columns, split sizes)
    vocab.json                  per sparse field: size and how raw values were encoded
    {train,valid,test}.parquet  encoded columns: int32 ids (0 = unknown), float32 dense,
                                int8 labels, and (synthetic data only) truth columns
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recsmith.atomic import write_json_atomic
from recsmith.errors import DataError
from recsmith.features.fields import VOCAB_FILE, DenseField, SparseField
from recsmith.tasks import TaskSpec

SCHEMA_FILE = "schema.json"
SPLITS = ("train", "valid", "test")
SCHEMA_VERSION = 2
__all__ = ["SCHEMA_FILE", "SPLITS", "VOCAB_FILE", "DatasetSchema", "DenseField", "SparseField"]

@dataclass
class DatasetSchema:
    name: str
    source: str
    sparse: list[SparseField]
    dense: list[DenseField]
    labels: list[str]  # label columns, e.g. ["click", "conversion"]
    tasks: list[TaskSpec]  # the heads this dataset can train, e.g. ctr (click), cvr (conversion | click)
    user_field: str | None = None  # the field GAUC groups by
    truth: list[str] = field(default_factory=list)  # ground-truth columns, never features
    split_rows: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # how the data was made (generator knobs, ...)

    def __post_init__(self) -> None:
        names = [f.name for f in self.sparse] + [f.name for f in self.dense]
        names += list(self.labels) + list(self.truth)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(f"schema '{self.name}' names these columns twice: {duplicates}")
        if self.user_field is not None and self.user_field not in self.sparse_names:
            raise DataError(f"schema user_field '{self.user_field}' is not a sparse field")
        for task in self.tasks:
            for column in (task.label, task.observed_when):
                if column is not None and column not in self.labels:
                    raise DataError(f"schema task '{task.name}' names '{column}', which is not a label")

    @property
    def task_specs(self) -> dict[str, TaskSpec]:
        return {task.name: task for task in self.tasks}

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [f.name for f in self.dense]

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.sparse]

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> "DatasetSchema":
        data = dict(data)
        version = data.pop("schema_version", None)
        if version != SCHEMA_VERSION:
            raise DataError(f"schema version {version} is not supported (expected {SCHEMA_VERSION})")
        data["sparse"] = [SparseField(**f) for f in data["sparse"]]
        data["dense"] = [DenseField(**f) for f in data["dense"]]
        data["tasks"] = [TaskSpec(**t) for t in data["tasks"]]
        return cls(**data)

    def save(self, directory: Path) -> None:
        write_json_atomic(directory / SCHEMA_FILE, self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> "DatasetSchema":
        path = Path(directory) / SCHEMA_FILE
        if not path.is_file():
            raise DataError(f"not a prepared dataset (no {SCHEMA_FILE}): {directory}")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed schema ({exc})") from None
