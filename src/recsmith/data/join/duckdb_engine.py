"""The sample join in DuckDB SQL (embedded, the default engine).

Small intermediate tables (clicks, attributed clicks, conversion classes, labels) are
materialised; impressions and the feature log are deduplicated with QUALIFY inside the
single COPY that writes the output, so the large tables are read once for the output.
"""

from __future__ import annotations

import tempfile

from recsmith.data.join import ENGINES
from recsmith.data.join.plan import (
    FLOAT, INTEGER, NESTED, SCALAR, STRING, TIMESTAMP, InputFiles, JoinCounts, JoinLayout, JoinTask,
)
from recsmith.errors import DataError

_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
             "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOATS = {"FLOAT", "DOUBLE", "REAL"}


@ENGINES.register("duckdb")
def join_with_duckdb(task: JoinTask) -> JoinCounts:
    """Run the join in an in-memory DuckDB database; write `task.output`; count every rule."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="recsmith-duckdb-") as spill, duckdb.connect() as con:
        con.execute(f"SET temp_directory = {_lit(spill)}")
        con.execute("SET preserve_insertion_order = false")
        schemas = {}
        for table, source in task.inputs.items():
            try:
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM {_reader(source)}")
                rows = con.execute(f"DESCRIBE {table}").fetchall()
            except duckdb.Error as exc:
                raise DataError(f"{table} ({source.path}): cannot read: {_first_line(exc)}") from None
            schemas[table] = {name: _kind(dtype) for name, dtype, *_ in rows}
        layout = task.layout(schemas)
        try:
            return _join(con, task, layout)
        except duckdb.Error as exc:
            raise DataError(f"join failed: {_first_line(exc)}") from None


def _join(con, task: JoinTask, lay: JoinLayout) -> JoinCounts:
    key, cid, rid = _q(lay.key), _q(lay.click_id), _q(lay.request_id)
    window_us = lay.window_seconds * 1_000_000
    has_features = bool(lay.feature_order)

    con.execute(f"""
        CREATE TEMP TABLE clicks_seen AS
        SELECT c.k, c.cid, c.cts, EXISTS (SELECT 1 FROM impressions i WHERE i.{key} = c.k) AS matched
        FROM (SELECT {key} AS k, {cid} AS cid, {_micros(lay, 'clicks')} AS cts FROM clicks) c""")
    con.execute(f"""
        CREATE TEMP TABLE conversions_seen AS
        SELECT row_number() OVER () AS row_id, v.cid, v.vts,
               EXISTS (SELECT 1 FROM clicks_seen c WHERE c.cid = v.cid) AS known
        FROM (SELECT {cid} AS cid, {_micros(lay, 'conversions')} AS vts FROM conversions) v""")
    _require_times(con, task, lay)

    # The earliest matched click per key is the attributed one; ties broken by click id.
    con.execute("""
        CREATE TEMP TABLE attributed AS
        SELECT k, cid, cts FROM clicks_seen WHERE matched
        QUALIFY row_number() OVER (PARTITION BY k ORDER BY cts, cid NULLS LAST) = 1""")
    in_window = f"v.vts - a.cts BETWEEN 0 AND {window_us}"
    con.execute(f"""
        CREATE TEMP TABLE conversion_classes AS
        SELECT v.row_id, any_value(v.cid) AS cid,
               CASE WHEN bool_or({in_window}) THEN 'in_window'
                    WHEN bool_or(v.vts - a.cts > {window_us}) THEN 'late'
                    WHEN bool_or(a.cts IS NOT NULL) THEN 'before_click'
                    WHEN bool_or(v.known) THEN 'unattributed'
                    ELSE 'orphan' END AS class
        FROM conversions_seen v LEFT JOIN attributed a ON a.cid = v.cid
        GROUP BY v.row_id""")
    con.execute(f"""
        CREATE TEMP TABLE labels AS
        SELECT a.k, coalesce(bool_or({in_window}), false) AS converted
        FROM attributed a LEFT JOIN conversions_seen v ON v.cid = a.cid
        GROUP BY a.k""")

    impressions = f"""(SELECT * FROM impressions QUALIFY row_number() OVER (
        PARTITION BY {_q(lay.impression_id)} ORDER BY {_order(lay.impression_order)}) = 1)"""
    select = [f"i.{_q(c)}" for c in lay.impression_columns]
    select += ["CAST(l.k IS NOT NULL AS TINYINT) AS label_click",
               "CAST(coalesce(l.converted, false) AS TINYINT) AS label_convert"]
    joins = f"LEFT JOIN labels l ON i.{key} = l.k"
    if has_features:
        select += [f"f.{_q(c)} AS {_q(name)}" for c, name in lay.features]
        joins += f""" LEFT JOIN (SELECT * FROM feature_log QUALIFY row_number() OVER (
            PARTITION BY {rid} ORDER BY {_order(lay.feature_order)}) = 1) f ON i.{rid} = f.{rid}"""
    con.execute(f"COPY (SELECT {', '.join(select)} FROM {impressions} i {joins}) "
                f"TO {_lit(str(task.output))} (FORMAT parquet)")

    counts = JoinCounts()
    one = lambda sql: con.execute(sql).fetchone()  # noqa: E731
    counts.impressions_in, = one("SELECT count(*) FROM impressions")
    counts.clicks_in, counts.orphan_clicks, matched = one(
        "SELECT count(*), count(*) FILTER (WHERE NOT matched), count(*) FILTER (WHERE matched) FROM clicks_seen")
    counts.attributed_clicks, = one("SELECT count(*) FROM attributed")
    counts.duplicate_clicks = matched - counts.attributed_clicks
    counts.conversions_in, = one("SELECT count(*) FROM conversions_seen")
    by_class = dict(con.execute("SELECT class, count(*) FROM conversion_classes GROUP BY class").fetchall())
    counts.orphan_conversions = by_class.get("orphan", 0)
    counts.unattributed_conversions = by_class.get("unattributed", 0)
    counts.conversions_before_click = by_class.get("before_click", 0)
    counts.late_conversions = by_class.get("late", 0)
    counts.attributed_conversions, = one(
        "SELECT count(DISTINCT cid) FROM conversion_classes WHERE class = 'in_window'")
    counts.duplicate_conversions = by_class.get("in_window", 0) - counts.attributed_conversions

    output = f"read_parquet({_lit(str(task.output))})"
    counts.rows_out, clicked, converted = one(
        f"SELECT count(*), sum(label_click), sum(label_convert) FROM {output}")
    counts.clicked_impressions, counts.converted_impressions = int(clicked or 0), int(converted or 0)
    counts.duplicate_impressions = counts.impressions_in - counts.rows_out
    if has_features:
        counts.feature_rows_in, = one("SELECT count(*) FROM feature_log")
        counts.duplicate_feature_rows = counts.feature_rows_in - one(
            f"SELECT count(*) FROM (SELECT DISTINCT {rid} FROM feature_log)")[0]
        counts.impressions_without_features, = one(
            f"SELECT count(*) FROM {output} o WHERE NOT EXISTS "
            f"(SELECT 1 FROM feature_log f WHERE f.{rid} = o.{rid})")
    else:
        counts.impressions_without_features = counts.rows_out
    return counts


def _require_times(con, task: JoinTask, lay: JoinLayout) -> None:
    """Clicks and conversions must all have a time: the window cannot place them otherwise."""
    for table, view, column in (("clicks", "clicks_seen", "cts"), ("conversions", "conversions_seen", "vts")):
        missing, = con.execute(f"SELECT count(*) FROM {view} WHERE {column} IS NULL").fetchone()
        if missing:
            raise DataError(f"{table} ({task.inputs[table].path}): {missing} rows have no '{lay.ts}'")


def _reader(source: InputFiles) -> str:
    files = "[" + ", ".join(_lit(f) for f in source.files) + "]"
    if source.format == "csv":
        return f"read_csv({files}, header = true, union_by_name = true)"
    return f"read_parquet({files}, hive_partitioning = false, union_by_name = true)"


def _kind(dtype: str) -> str:
    dtype = dtype.upper()
    if dtype.endswith("]") or dtype.startswith(("STRUCT", "MAP", "UNION")):
        return NESTED
    if dtype in _INTEGERS:
        return INTEGER
    if dtype in _FLOATS:
        return FLOAT
    if dtype == "VARCHAR":
        return STRING
    if dtype.startswith("TIMESTAMP"):
        return TIMESTAMP
    return SCALAR


def _micros(lay: JoinLayout, table: str) -> str:
    """The table's event time as integer microseconds since the epoch."""
    column = _q(lay.ts)
    if lay.ts_kinds[table] == INTEGER:
        return f"CAST({column} AS BIGINT) * 1000000"
    return f"epoch_us({column})"


def _order(columns) -> str:
    return ", ".join(f"{_q(c)} ASC NULLS LAST" for c in columns)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
