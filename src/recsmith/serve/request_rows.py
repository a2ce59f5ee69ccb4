"""Raw request rows (or columns) → one typed table, cast to the raw schema the model's feature
definitions imply (`FeaturePipeline.raw_schema`: text for vocabularies, int64 for identity
ids, float64 for numbers).

Casting here, before anything else, means two clients sending `1` and `"1"` produce tables
of the same schema (so the request log can never be poisoned by one of them), and a value
the model cannot take is one DataError naming its row and field: a missing field, text that
is not a number, an integer beyond 64 bits, a number that is not finite in float32 (the
model's precision: 1e308, inf, NaN; a missing value is `null`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from recsmith.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)
CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)
SHOWN_CHARS = 40  # of a rejected value in a message


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """The rows' values of every column in `schema`, cast to its type; a DataError names the
    first row and field that cannot be."""
    columns = []
    for field in schema:
        name = field.name  # read once: each read builds a new str from Arrow's
        try:
            values = [row[name] for row in rows]
        except KeyError:
            index = next(i for i, row in enumerate(rows) if name not in row)
            raise DataError(f"row {index} lacks the field '{name}' (send null for a missing value)") from None
        columns.append(_column(values, field))
    return pa.Table.from_arrays(columns, schema=schema)


def columns_to_table(values: dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    """The columnar form of `rows_to_table` ({field: [value per row]}: a third of the bytes of
    rows, and no per-row work): the same casts and the same errors, by row and field."""
    lengths = [len(column) for column in values.values()]
    if len(set(lengths)) > 1:
        usual = max(set(lengths), key=lengths.count)
        odd = ", ".join(f"'{name}' has {len(column)}" for name, column in values.items() if len(column) != usual)
        raise DataError(f"columns of different lengths: most have {usual} values, {odd}")
    columns = []
    for field in schema:
        name = field.name
        if name not in values:
            raise DataError(f"the columns lack the field '{name}' (send null for a missing value)")
        columns.append(_column(values[name], field))
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: list, field: pa.Field) -> pa.Array:
    try:
        column = _cast(values, field.type)
    except CAST_ERRORS:
        raise DataError(_first_uncastable(values, field)) from None
    if pa.types.is_floating(field.type):
        _check_finite(column, field.name)
    return column


def _cast(values: list, target: pa.DataType) -> pa.Array:
    """Numbers straight to float64 (the common case, no cast kernel); anything else inferred,
    then cast with Arrow's safe cast (ids sent as numbers to a text column, numbers sent as
    text; 3.5 is no int64); rows mixing kinds (5 and "5") value by value, each as it would be
    alone."""
    if pa.types.is_floating(target):
        try:
            return pa.array(values, type=target)
        except CAST_ERRORS:
            pass
    try:
        inferred = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds: the rare, slow path
        return pa.concat_arrays([pa.array([value]).cast(target) for value in values])
    return inferred if inferred.type == target else inferred.cast(target)


def _first_uncastable(values: list, field: pa.Field) -> str:
    kind = {"string": "text", "int64": "an integer", "double": "a number"}[str(field.type)]
    for index, value in enumerate(values):
        try:
            _cast([value], field.type)
        except OverflowError:
            return f"row {index}, field '{field.name}': {_shown(value)} does not fit a 64-bit integer"
        except CAST_ERRORS:
            return f"row {index}, field '{field.name}': {_shown(value)} cannot be read as {kind}"
    return f"field '{field.name}': values that cannot be read as {kind}"


def _check_finite(column: pa.Array, name: str) -> None:
    values = column.to_numpy(zero_copy_only=False)  # nulls → NaN, told apart below
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(values) <= FLOAT32_MAX)
    if column.null_count:
        bad &= ~column.is_null().to_numpy(zero_copy_only=False)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(f"row {index}, field '{name}': {float(values[index])!r} is not a finite float32 number "
                        f"(|x| ≤ {FLOAT32_MAX:.4g}; send null for a missing value)")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"
