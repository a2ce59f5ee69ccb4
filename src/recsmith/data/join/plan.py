"""What every engine shares: which files each input is, which columns the logs must
have, and which columns the output gets under which names. Engines only read schemas,
map their types to the kinds below and run the rules; naming and checking live here, so
the engines cannot drift apart.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from recsmith.data.join.definition import JoinDefinition
from recsmith.errors import DataError, did_you_mean

TABLES = ("impressions", "clicks", "conversions", "feature_log")
LABELS = ("label_click", "label_convert")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}

# Column kinds engines map their types to. Only "nested" columns cannot be sorted on.
INTEGER, FLOAT, STRING, TIMESTAMP, SCALAR, NESTED = "integer", "float", "string", "timestamp", "scalar", "nested"
Schema = dict[str, str]  # column name -> kind, in file order


@dataclass(frozen=True)
class InputFiles:
    """The files of one input, all of one format."""

    table: str
    path: str  # as the definition names it, for messages
    files: tuple[str, ...]
    format: str  # "parquet" or "csv"


def resolve_input(table: str, path: str) -> InputFiles:
    """A file, a directory (searched recursively) or a glob → its Parquet/CSV files."""
    target = Path(path)
    if glob.has_magic(path):
        found = [Path(p) for p in sorted(glob.glob(path, recursive=True)) if Path(p).is_file()]
    elif target.is_dir():
        found = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                       and not any(part.startswith((".", "_")) for part in p.relative_to(target).parts))
    elif target.is_file():
        found = [target]
    else:
        raise DataError(f"{table}: input not found: {path}")
    if not found:
        raise DataError(f"{table}: no Parquet or CSV files in {path}")
    formats = {FORMATS.get(p.suffix.lower()) for p in found}
    if None in formats:
        odd = next(p for p in found if p.suffix.lower() not in FORMATS)
        raise DataError(f"{table}: {odd} is neither Parquet (.parquet, .pq) nor CSV (.csv)")
    if len(formats) > 1:
        raise DataError(f"{table}: {path} mixes Parquet and CSV files; use one format per input")
    return InputFiles(table, path, tuple(str(p) for p in found), formats.pop())


def resolve_inputs(definition: JoinDefinition) -> dict[str, InputFiles]:
    """Every input of the definition (the feature log only when named), checked to exist."""
    return {table: resolve_input(table, getattr(definition, table))
            for table in TABLES if getattr(definition, table) is not None}


@dataclass(frozen=True)
class JoinLayout:
    """Checked column names: what each table must have and what the output holds."""

    key: str  # the column clicks join impressions on
    request_id: str
    impression_id: str
    click_id: str
    ts: str
    window_seconds: int
    impression_columns: tuple[str, ...]  # output, in file order
    impression_order: tuple[str, ...]  # dedupe order: ts, then every sortable column
    features: tuple[tuple[str, str], ...] = ()  # (feature-log column, output name)
    feature_order: tuple[str, ...] = ()  # feature-log dedupe order (ts first when present)
    ts_kinds: Mapping[str, str] = field(default_factory=dict)  # table -> INTEGER or TIMESTAMP

    @property
    def output_columns(self) -> tuple[str, ...]:
        return (*self.impression_columns, *LABELS, *(name for _, name in self.features))


def plan_layout(definition: JoinDefinition, inputs: Mapping[str, InputFiles],
                schemas: Mapping[str, Schema]) -> JoinLayout:
    """Check the logs' columns against the definition; name the output's columns.

    Raises a DataError naming the input and column for a missing column, a timestamp that
    is neither a timestamp nor integer epoch seconds, join keys of different kinds on the
    two sides, or an output column name used twice.
    """
    cols = definition.columns
    key = definition.key_column
    has_features = "feature_log" in schemas
    required = {
        "impressions": [cols.impression_id, cols.ts, key] + ([cols.request_id] if has_features else []),
        "clicks": [key, cols.click_id, cols.ts],
        "conversions": [cols.click_id, cols.ts],
        "feature_log": [cols.request_id],
    }
    for table, schema in schemas.items():
        for column in dict.fromkeys(required[table]):
            if column not in schema:
                raise DataError(f"{table} ({inputs[table].path}): required column '{column}' not found"
                                f"{did_you_mean(column, schema)}; it has {', '.join(schema)}")
    ts_kinds = {}
    for table in ("impressions", "clicks", "conversions"):
        kind = schemas[table][cols.ts]
        if kind not in (INTEGER, TIMESTAMP):
            raise DataError(f"{table} ({inputs[table].path}): column '{cols.ts}' must be a timestamp or "
                            f"integer epoch seconds, not {kind}")
        ts_kinds[table] = kind
    pairs = [("impressions", "clicks", key), ("clicks", "conversions", cols.click_id)]
    if has_features:
        pairs.append(("impressions", "feature_log", cols.request_id))
    for left, right, column in pairs:
        if schemas[left][column] != schemas[right][column]:
            raise DataError(f"{right} ({inputs[right].path}): join column '{column}' is {schemas[right][column]} "
                            f"but in {left} it is {schemas[left][column]}")

    impression_columns = tuple(schemas["impressions"])
    features: tuple[tuple[str, str], ...] = ()
    feature_order: tuple[str, ...] = ()
    if has_features:
        log = schemas["feature_log"]
        features = tuple((c, definition.feature_prefix + c) for c in log if c not in (cols.request_id, cols.ts))
        feature_order = tuple(dict.fromkeys(([cols.ts] if cols.ts in log else []) + _sortable(log)))
    seen: dict[str, str] = {}
    for name, origin in [*((c, "impressions") for c in impression_columns), *((c, "labels") for c in LABELS),
                         *((name, f"feature_log column '{c}'") for c, name in features)]:
        # DuckDB and Spark both compare column names case-insensitively.
        if name.lower() in seen:
            hint = "; set feature_prefix" if origin.startswith("feature_log") else ""
            raise DataError(f"output column '{name}' from {origin} clashes with one from {seen[name.lower()]}"
                            f"{hint}")
        seen[name.lower()] = origin
    return JoinLayout(
        key=key, request_id=cols.request_id, impression_id=cols.impression_id, click_id=cols.click_id,
        ts=cols.ts, window_seconds=definition.attribution_window, impression_columns=impression_columns,
        impression_order=tuple(dict.fromkeys([cols.ts] + _sortable(schemas["impressions"]))), features=features,
        feature_order=feature_order, ts_kinds=ts_kinds)


def _sortable(schema: Schema) -> list[str]:
    return [c for c, kind in schema.items() if kind != NESTED]


@dataclass
class JoinCounts:
    """What the join kept and dropped, by rule. Every input row lands in exactly one
    bucket: clicks_in = orphan + duplicate + attributed clicks, and conversions_in =
    orphan + unattributed + before_click + late + duplicate + attributed conversions."""

    impressions_in: int = 0
    duplicate_impressions: int = 0
    clicks_in: int = 0
    orphan_clicks: int = 0
    duplicate_clicks: int = 0
    attributed_clicks: int = 0
    conversions_in: int = 0
    orphan_conversions: int = 0
    unattributed_conversions: int = 0
    conversions_before_click: int = 0
    late_conversions: int = 0
    duplicate_conversions: int = 0
    attributed_conversions: int = 0
    feature_rows_in: int = 0
    duplicate_feature_rows: int = 0
    impressions_without_features: int = 0
    rows_out: int = 0
    clicked_impressions: int = 0
    converted_impressions: int = 0


@dataclass(frozen=True)
class JoinTask:
    """What an engine gets: the definition, its resolved inputs and where to write."""

    definition: JoinDefinition
    inputs: Mapping[str, InputFiles]
    output: Path  # a temporary file; run_join renames it once the join succeeded

    def layout(self, schemas: Mapping[str, Schema]) -> JoinLayout:
        return plan_layout(self.definition, self.inputs, schemas)

