"""Generic CSV / Parquet data with a user-written dataset spec (`data.source: table`,
`data.path: my_dataset.yaml`):

    name: my_ads
    input:
      path: logs/joined.parquet     # a file, a folder of files, or a glob; relative to this spec
      format: auto                  # auto (by extension) | csv | parquet
      delimiter: ","                # csv only
      encoding: utf-8               # csv only
    features: [...]                 # see recsmith.features.definitions
    labels: {click: label_click, conversion: label_convert}   # dataset label -> column
    tasks:                          # default: ctr/cvr when the labels are click and conversion,
      - {name: ctr, label: click}   #          else one task per label, named after it
      - {name: cvr, label: conversion, observed_when: click}
    user_field: user_id             # the categorical feature GAUC groups by (optional)
    split: {kind: random, valid_fraction: 0.1, test_fraction: 0.1, seed: 20260127}
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsmith.config.loader import read_yaml, validate_model
from recsmith.data.prepare import Chunk, RejectLog, SplitRule, TabularSpec, prepare_cached, prepare_tabular
from recsmith.data.readers import read_delimited, read_parquet
from recsmith.data.sources import SOURCES, Progress, cache_dir, extends_vocab, vocab_base
from recsmith.errors import DataError
from recsmith.features.definitions import FeatureSet, FeatureSpec, unique_features
from recsmith.tasks import FUNNEL_TASKS, TaskSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class InputSpec(_Strict):
    path: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    delimiter: str = ","
    encoding: str = "utf-8"


class TaskEntry(_Strict):
    name: str
    label: str
    observed_when: Optional[str] = None


class TableDatasetSpec(_Strict):
    name: str
    input: InputSpec
    features: list[FeatureSpec] = Field(min_length=1)
    labels: dict[str, str] = Field(min_length=1)
    tasks: Optional[list[TaskEntry]] = None
    user_field: Optional[str] = None
    split: SplitRule = Field(default_factory=SplitRule)

    @field_validator("features")
    @classmethod
    def _unique(cls, value: list[FeatureSpec]) -> list[FeatureSpec]:
        return unique_features(value)


def load_table_spec(path: Path) -> TableDatasetSpec:
    return validate_model(TableDatasetSpec, read_yaml(path), where=str(path))


def input_files(spec: TableDatasetSpec, base: Path) -> list[Path]:
    pattern = Path(spec.input.path).expanduser()
    pattern = pattern if pattern.is_absolute() else base / pattern
    if pattern.is_dir():
        files = sorted(p for p in pattern.iterdir() if p.suffix in (".csv", ".parquet", ".gz", ".tsv"))
    elif any(ch in str(pattern) for ch in "*?["):
        files = sorted(pattern.parent.glob(pattern.name))
    else:
        files = [pattern]
    files = [f for f in files if f.is_file()]
    if not files:
        raise DataError(f"input.path: no input files at {pattern}")
    return files


def tasks_for(spec: TableDatasetSpec) -> list[TaskSpec]:
    if spec.tasks is not None:
        return [TaskSpec(t.name, t.label, t.observed_when) for t in spec.tasks]
    if set(spec.labels) == {"click", "conversion"}:
        return list(FUNNEL_TASKS)
    return [TaskSpec(name, name) for name in spec.labels]


def tabular_spec(spec: TableDatasetSpec) -> TabularSpec:
    return TabularSpec(name=spec.name, source="table", features=FeatureSet(features=spec.features),
                       labels=dict(spec.labels), tasks=tasks_for(spec), user_field=spec.user_field,
                       split=spec.split, meta={"input": spec.input.path})


def reader(spec: TableDatasetSpec, files: list[Path]):
    features = FeatureSet(features=spec.features)
    numeric = sorted({f.column for f in features.features
                      if f.type == "numeric" or f.transformation.kind in ("identity", "bucketize")}
                     | set(spec.labels.values()))
    wanted = sorted(set(features.columns) | set(spec.labels.values())
                    | ({spec.split.column} if spec.split.kind == "column" else set()))

    def read(rejects: RejectLog) -> Iterator[Chunk]:
        for path in files:
            fmt = spec.input.format
            if fmt == "auto":
                fmt = "parquet" if path.suffix == ".parquet" else "csv"
            if fmt == "parquet":
                yield from read_parquet(path, wanted)
            else:
                yield from read_delimited(path, rejects, delimiter=spec.input.delimiter, numeric=numeric,
                                          encoding=spec.input.encoding)

    return read


@SOURCES.register("table")
@extends_vocab
def table_source(data_cfg, progress: Progress = None) -> Path:
    """CSV / Parquet files described by the dataset spec at `data.path`."""
    if not data_cfg.path:
        raise DataError("data.path: the 'table' source needs the path of a dataset spec (YAML)")
    spec_path = Path(data_cfg.path).expanduser().resolve()
    spec = load_table_spec(spec_path)
    files = input_files(spec, spec_path.parent)
    base, base_key = vocab_base(data_cfg)
    payload = {"spec": spec.model_dump(mode="json"), "max_bad_rows": data_cfg.max_bad_rows,
               "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files], **base_key}

    def build(staging: Path, rejects: Path) -> None:
        prepare_tabular(tabular_spec(spec), reader(spec, files), staging, data_cfg.max_bad_rows,
                        progress, rejects_path=rejects, base=base)

    return prepare_cached(cache_dir("table", payload), build)
