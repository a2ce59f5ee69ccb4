"""A readable description of a prepared dataset."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from recsmith.data.schema import SPLITS
from recsmith.data.sources import check_dataset_dir
from recsmith.metrics.funnel import oracle_metrics


def describe_dataset(path: str | Path) -> str:
    path = Path(path)
    schema = check_dataset_dir(path)
    lines = [f"dataset {schema.name} ({schema.source}) at {path}",
             f"  {len(schema.sparse)} sparse fields: " + ", ".join(f"{f.name}[{f.vocab_size}]" for f in schema.sparse),
             f"  {len(schema.dense)} dense fields: " + ", ".join(schema.dense_names),
             f"  labels: {', '.join(schema.labels)}" + (f"; truth columns: {', '.join(schema.truth)}" if schema.truth else ""),
             "  tasks: " + ", ".join(f"{t.name} ({t.label}" + (f" | {t.observed_when})" if t.observed_when else ")")
                                     for t in schema.tasks)]
    if "rows_read" in schema.meta:
        lines.append(f"  raw rows read: {schema.meta['rows_read']:,}, rejected: {schema.meta['rows_rejected']:,}")
    for split in SPLITS:
        table = pq.read_table(path / f"{split}.parquet", columns=schema.labels + schema.truth)
        cols = {name: table.column(name).to_numpy().astype("float64") for name in table.column_names}
        rates = "  ".join(f"{name} rate {cols[name].mean():.4f}" for name in schema.labels)
        lines.append(f"  {split}: {table.num_rows:,} rows  {rates}")
        if "true_ctr" in cols:
            oracle = oracle_metrics(cols, cols)
            lines.append("    oracle AUC: " + "  ".join(f"{k.removeprefix('oracle_auc_')} {v:.4f}" for k, v in oracle.items()))
    return "\n".join(lines)
