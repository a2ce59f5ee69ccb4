"""Sample joining: raw ad logs → one labelled row per impression (`recsmith data join`).

Inputs (each a Parquet or CSV file, a directory of them, or a glob; column names
configurable, see `definition.JoinDefinition`):

- impressions: impression_id, ts, request_id (when clicks or the feature log use it),
  any other columns (all kept);
- clicks: click_id, the join key (impression_id by default, or request_id), ts;
- conversions: click_id, ts;
- feature log (optional): request_id and the features as served.

`ts` is a timestamp or integer epoch seconds, and may differ in type between logs.

Rules, each counted in the report (every input row lands in exactly one bucket):

1. Impressions with the same impression_id are one impression: the earliest by ts is kept
   (ties broken by the other columns in file order) — `duplicate_impressions`.
2. A click joins the impressions with its join key. Clicks matching no impression are
   dropped — `orphan_clicks`. Of the clicks on one key, the earliest (ties: smallest
   click_id) is the attributed click; the others are dropped — `duplicate_clicks`,
   `attributed_clicks`. With `join_key: request_id` a click labels every impression of its
   request (use it when a request shows one ad).
3. label_click = 1 when the impression has an attributed click.
4. A conversion counts for the attributed click with its click_id when
   0 ≤ conversion.ts − click.ts ≤ attribution_window (both ends included). Otherwise it is
   dropped as: `orphan_conversions` (no click has its click_id),
   `unattributed_conversions` (its click is an orphan or a duplicate click),
   `conversions_before_click` (negative delay) or `late_conversions` (beyond the window).
   Several conversions on one click count once — `duplicate_conversions`,
   `attributed_conversions` (one per converted click).
5. label_convert = 1 when the impression's attributed click has a counted conversion.
6. Feature-log rows join by request_id (one per request: the earliest by ts when the log
   has ts, else by its columns — `duplicate_feature_rows`); its columns other than
   request_id and ts are appended, named `feature_prefix + name`. An impression without a
   feature row keeps nulls — `impressions_without_features`.

Nulls never join. Clicks and conversions must all have a ts. The output is one Parquet
file (impression columns, label_click and label_convert as int8, the feature columns; row
order unspecified), written atomically, with `join_report.json` beside it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from recsmith.atomic import write_json_atomic
from recsmith.data.join.definition import JoinDefinition, load_definition, parse_window
from recsmith.data.join.plan import JoinCounts, JoinTask, resolve_inputs
from recsmith.errors import DataError
from recsmith.registry import Registry

ENGINES: Registry[Callable[[JoinTask], JoinCounts]] = Registry("join engine")
REPORT_FILE = "join_report.json"


@dataclass
class JoinReport(JoinCounts):
    """The counts of every rule plus what ran: engine, wall seconds, files."""

    engine: str = ""
    seconds: float = 0.0
    output: str = ""
    report: str = ""
    join_key: str = ""
    attribution_window_seconds: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_join(definition: JoinDefinition | str | Path, engine: Optional[str] = None,
             output: str | Path | None = None) -> JoinReport:
    """Join the logs a definition (file or object) names; write the samples and the report.

    `engine` ("duckdb" or "spark") and `output` override the definition's. Returns the
    report, also written as `join_report.json` beside the output. Raises ConfigError for a
    bad definition or engine name and DataError for a missing input, a missing or mistyped
    column, or an empty result; the output is then left untouched.
    """
    if not isinstance(definition, JoinDefinition):
        definition = load_definition(definition)
    engine = engine or definition.engine
    run = ENGINES.get(engine, "engine")
    inputs = resolve_inputs(definition)
    target = Path(output if output is not None else definition.output).expanduser()
    if target.is_dir():
        raise DataError(f"output: {target} is a directory; name a .parquet file")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp{os.getpid()}")
    started = time.perf_counter()
    try:
        counts = run(JoinTask(definition, inputs, staging))
        if counts.rows_out == 0:
            raise DataError(f"empty result: impressions ({inputs['impressions'].path}) has no rows; "
                            f"nothing written to {target}")
        staging.replace(target)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            staging.unlink()
    report = JoinReport(**dataclasses.asdict(counts), engine=engine,
                        seconds=round(time.perf_counter() - started, 3), output=str(target),
                        report=str(target.with_name(REPORT_FILE)), join_key=definition.join_key,
                        attribution_window_seconds=definition.attribution_window)
    write_json_atomic(report.report, report.to_dict())
    return report


# Engines register themselves on import; neither imports its library until it runs.
from recsmith.data.join import duckdb_engine, spark_engine  # noqa: E402,F401

__all__ = ["ENGINES", "JoinDefinition", "JoinReport", "load_definition", "parse_window", "run_join"]
