"""`recsmith predict`: batch inference over a Parquet or CSV file, streamed in chunks, with
the same encoders and model the service uses. The output holds the input's columns plus
one `prob_<output>` column per head (a sequence run's: recsmith.online.batch); it is
written under a temporary name and renamed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recsmith.atomic import replace_atomically
from recsmith.errors import DataError, RecsmithError
from recsmith.serve.scorer import Scorer

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def file_format(path: Path, what: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{what}: {path} is neither .parquet nor .csv")
    return fmt


def predict_file(scorer: Scorer, source: str | Path, target: str | Path, chunk_rows: int = 65_536,
                 progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Score every row of `source` into `target`; returns the number of rows."""
    source, target = Path(source), Path(target)
    if not source.exists():
        raise DataError(f"--input: {source} not found")
    dataset = ds.dataset(source, format=file_format(source, "--input"))
    needed = getattr(scorer, "input_columns", None) or scorer.pipeline.features.columns
    missing = [c for c in needed if c not in dataset.schema.names]
    if missing:
        raise DataError(f"{source}: lacks the feature columns {', '.join(missing)}")
    total = dataset.count_rows()
    prefix = getattr(scorer, "output_prefix", "prob_")  # the ranking family's outputs are probabilities
    out_format = file_format(target, "--output")
    done = 0

    def write(tmp: Path) -> None:
        nonlocal done
        writer = None
        try:
            for batch in read_batches(dataset, source, chunk_rows):
                table = pa.Table.from_batches([batch])
                try:
                    probs = scorer.predict_table(table)
                except RecsmithError as exc:
                    raise DataError(f"{source}, rows {done}..{done + table.num_rows - 1}: {exc}") from None
                for name, values in probs.items():
                    table = table.append_column(f"{prefix}{name}", pa.array(values))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema) if out_format == "parquet" \
                        else pacsv.CSVWriter(tmp, table.schema)
                writer.write_table(table)
                done += table.num_rows
                if progress:
                    progress(done, total)
        finally:
            if writer is not None:
                writer.close()

    target.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(target, write)
    return done


# pyarrow's message for a CSV value that does not fit the type inferred from the first block
CONVERSION = re.compile(r"In CSV column #(\d+): Row #(\d+): CSV conversion error to (\w+): invalid value '(.*)'")


def read_batches(dataset: ds.Dataset, source: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """The dataset's batches; a value that cannot be read (a CSV column whose type changes
    after the rows its type was inferred from) is a DataError naming the file, rows and column."""
    batches, done = dataset.to_batches(batch_size=chunk_rows), 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise unreadable(exc, dataset, source, done, chunk_rows) from None
        yield batch
        done += batch.num_rows


def unreadable(exc: pa.ArrowInvalid, dataset: ds.Dataset, source: Path, done: int, chunk_rows: int) -> DataError:
    match = CONVERSION.search(str(exc))
    if not match:
        return DataError(f"{source}, rows {done + 1:,}..{done + chunk_rows:,}: cannot be read "
                         f"({str(exc).splitlines()[0]})")
    column, line, kind, value = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
    name = dataset.schema.names[column] if column < len(dataset.schema.names) else f"#{column + 1}"
    row = line - 1  # pyarrow counts lines, the header being line 1
    return DataError(f"{source}: column '{name}' is {kind} in rows 1..{row - 1:,} but row {row:,} (line {line:,}) "
                     f"holds {value!r}; give the column one type throughout (or write the file as Parquet)")
