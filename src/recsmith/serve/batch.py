"""`recsmith predict`: batch inference over a Parquet or CSV file, streamed in chunks, with
the same encoders and model the service uses. The output holds the input's columns plus
one `prob_<output>` column per head; it is written under a temporary name and renamed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

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
    missing = [c for c in scorer.pipeline.features.columns if c not in dataset.schema.names]
    if missing:
        raise DataError(f"{source}: lacks the feature columns {', '.join(missing)}")
    total = dataset.count_rows()
    out_format = file_format(target, "--output")
    done = 0

    def write(tmp: Path) -> None:
        nonlocal done
        writer = None
        try:
            for batch in dataset.to_batches(batch_size=chunk_rows):
                table = pa.Table.from_batches([batch])
                try:
                    probs = scorer.predict_table(table)
                except RecsmithError as exc:
                    raise DataError(f"{source}, rows {done}..{done + table.num_rows - 1}: {exc}") from None
                for name, values in probs.items():
                    table = table.append_column(f"prob_{name}", pa.array(values))
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
