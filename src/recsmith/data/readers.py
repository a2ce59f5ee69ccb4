"""Raw-file readers that yield `Chunk`s with exact line numbers, for `prepare_tabular`.

`read_delimited` checks every line's field count (and that numeric columns hold numbers)
in Python's cheap string operations, logs malformed lines with their numbers, and parses
the good lines with pyarrow's CSV parser. It reads plain or gzipped text in any encoding
and with multi-character delimiters (MovieLens-1M's `::`).
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsmith.data.prepare import LINE, SPLIT, Chunk, RejectLog
from recsmith.errors import DataError

NUMBER = r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"
UNIT_SEPARATOR = "\x1f"  # stands in for multi-character delimiters before parsing


def open_text(path: Path, encoding: str):
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def find_file(directory: Path, name: str) -> Path:
    """`directory/name`, or its gzipped copy `name.gz`."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"file not found: {directory / name} (nor {name}.gz)")


def read_delimited(path: Path, rejects: RejectLog, *, delimiter: str = ",", columns: Sequence[str] | None = None,
                   numeric: Sequence[str] = (), encoding: str = "utf-8", strip: bool = False,
                   quoted: bool = True, chunk_lines: int = 200_000, split: str | None = None,
                   skip_blank: bool = True) -> Iterator[Chunk]:
    """Chunks of a delimited text file. With `columns` the file has no header line."""
    label = path.name
    with open_text(path, encoding) as handle:
        line_no = 0
        if columns is None:
            header = handle.readline()
            line_no = 1
            if not header:
                raise DataError(f"{path}: empty file")
            columns = [c.strip() for c in _split_fields(header.rstrip("\r\n"), delimiter, quoted)]
        names = list(columns)
        unknown = [c for c in numeric if c not in names]
        if unknown:
            raise DataError(f"{path}: no column {', '.join(unknown)} (columns: {', '.join(names)})")
        while True:
            good, lines = [], []
            for raw in handle:
                line_no += 1
                line = raw.rstrip("\r\n")
                if skip_blank and not line.strip():
                    continue
                count = len(_split_fields(line, delimiter, quoted)) if quoted and '"' in line \
                    else line.count(delimiter) + 1
                if count != len(names):
                    rejects.add(label, line_no, f"expected {len(names)} fields, found {count}", line)
                    continue
                good.append(line)
                lines.append(line_no)
                if len(good) >= chunk_lines:
                    break
            if not good:
                return
            table = _parse(good, names, delimiter, quoted)
            table = table.append_column(LINE, pa.array(lines, pa.int64()))
            table = _numeric(table, numeric, rejects, label, good)
            if strip:
                table = pa.table({c: pc.utf8_trim_whitespace(table[c]) if pa.types.is_string(table[c].type)
                                  else table[c] for c in table.column_names})
            if split is not None:
                table = table.append_column(SPLIT, pa.array([split] * table.num_rows, pa.string()))
            yield Chunk(table, label)


def _split_fields(line: str, delimiter: str, quoted: bool) -> list[str]:
    if quoted and len(delimiter) == 1:
        return next(csv.reader([line], delimiter=delimiter))
    return line.split(delimiter)


def _parse(lines: list[str], names: list[str], delimiter: str, quoted: bool) -> pa.Table:
    if len(delimiter) > 1:
        lines = [line.replace(delimiter, UNIT_SEPARATOR) for line in lines]
        delimiter = UNIT_SEPARATOR
    data = ("\n".join(lines) + "\n").encode("utf-8")
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                             strings_can_be_null=True, quoted_strings_can_be_null=False),
    )


def _numeric(table: pa.Table, numeric: Sequence[str], rejects: RejectLog, label: str,
             raw_lines: list[str]) -> pa.Table:
    """Cast numeric columns to float64, rejecting lines whose value is not a number."""
    if not numeric:
        return table
    bad = np.zeros(table.num_rows, bool)
    reasons: dict[int, str] = {}
    for column in numeric:
        values = table[column]
        ok = pc.fill_null(pc.match_substring_regex(values, NUMBER), True).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(~ok & ~bad):
            reasons[i] = f"{column}: {values[int(i)].as_py()!r} is not a number"
        bad |= ~ok
    lines = table[LINE].to_numpy()
    for i in np.flatnonzero(bad):
        rejects.add(label, lines[i], reasons[i], raw_lines[i])
    table = table.filter(pa.array(~bad))
    for column in numeric:
        index = table.column_names.index(column)
        table = table.set_column(index, column, pc.cast(pc.utf8_trim_whitespace(table[column]), pa.float64()))
    return table


def read_parquet(path: Path, columns: Sequence[str], chunk_rows: int = 500_000,
                 split: str | None = None) -> Iterator[Chunk]:
    """Chunks of a Parquet file; LINE is the 1-based row number."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # not a Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in columns if c not in handle.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)}")
    start = 0
    for batch in handle.iter_batches(batch_size=chunk_rows, columns=list(columns)):
        table = pa.Table.from_batches([batch])
        table = table.append_column(LINE, pa.array(np.arange(start + 1, start + 1 + table.num_rows), pa.int64()))
        if split is not None:
            table = table.append_column(SPLIT, pa.array([split] * table.num_rows, pa.string()))
        start += batch.num_rows
        yield Chunk(table, path.name)
