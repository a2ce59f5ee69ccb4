"""The sample join with the Spark DataFrame API (PySpark, the `spark` extra).

Uses the active SparkSession when there is one (it is left running), otherwise starts a
local one (`local_session`) and stops it afterwards. The rules are those of the DuckDB
engine step for step; the output is coalesced into one Parquet file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recsmith.data.join import ENGINES
from recsmith.data.join.plan import (
    FLOAT, INTEGER, NESTED, SCALAR, STRING, TIMESTAMP, InputFiles, JoinCounts, JoinLayout, JoinTask,
)
from recsmith.errors import ConfigError, DataError

# Settings the rules depend on, set for the join and restored afterwards: naive timestamps
# read as UTC (as DuckDB does) and timestamps written as plain microseconds.
_JOIN_CONF = {"spark.sql.session.timeZone": "UTC",
              "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"}
_CLASS_COUNTS = {"orphan": "orphan_conversions", "unattributed": "unattributed_conversions",
                 "before_click": "conversions_before_click", "late": "late_conversions"}
_TMP = "__recsmith_"  # prefix of internal column names, so none clashes with a log's own


def local_session(master: str = "local[2]"):
    """A small local SparkSession: no UI, 2 shuffle partitions, UTC, quiet logs."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName("recsmith-join")
    for key, value in {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2",
                       "spark.ui.showConsoleProgress": "false", **_JOIN_CONF}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@ENGINES.register("spark")
def join_with_spark(task: JoinTask) -> JoinCounts:
    """Run the join on Spark; write `task.output`; count every rule."""
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError("engine: spark needs PySpark (pip install 'recsmith[spark]')") from None

    spark = SparkSession.getActiveSession()
    owned = spark is None
    if owned:
        try:
            spark = local_session()
        except Exception as exc:  # no Java, a port in use, ...: Spark's own reasons vary
            raise ConfigError(f"engine: spark could not start a local session (Java 17+ installed?): "
                              f"{_first_line(exc)}") from None
    saved = {key: spark.conf.get(key, None) for key in _JOIN_CONF}
    try:
        for key, value in _JOIN_CONF.items():
            spark.conf.set(key, value)
        frames = {}
        for table, source in task.inputs.items():
            try:
                frames[table] = _read(spark, source)
            except (PySparkException, Py4JJavaError) as exc:
                raise DataError(f"{table} ({source.path}): cannot read: {_first_line(exc)}") from None
        layout = task.layout({table: {f.name: _kind(f.dataType) for f in frame.schema.fields}
                              for table, frame in frames.items()})
        try:
            return _join(spark, frames, task, layout)
        except (PySparkException, Py4JJavaError) as exc:
            raise DataError(f"join failed: {_first_line(exc)}") from None
    finally:
        if owned:
            spark.stop()
        else:
            for key, value in saved.items():
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)


def _join(spark, frames: dict, task: JoinTask, lay: JoinLayout) -> JoinCounts:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    k, cid, cts, vts = (_TMP + n for n in ("k", "cid", "cts", "vts"))
    window_us = lay.window_seconds * 1_000_000
    cached = []

    def keep(frame):
        cached.append(frame.cache())
        return cached[-1]

    try:
        impression_keys = (frames["impressions"].select(_col(lay.key).alias(k)).where(F.col(k).isNotNull())
                           .distinct().withColumn("matched", F.lit(True)))
        clicks_seen = keep(
            frames["clicks"]
            .select(_col(lay.key).alias(k), _col(lay.click_id).alias(cid), _micros(lay, "clicks").alias(cts))
            .join(impression_keys, k, "left")
            .withColumn("matched", F.coalesce("matched", F.lit(False))))
        known_ids = (clicks_seen.select(cid).where(F.col(cid).isNotNull()).distinct()
                     .withColumn("known", F.lit(True)))
        conversions_seen = keep(
            frames["conversions"]
            .select(_col(lay.click_id).alias(cid), _micros(lay, "conversions").alias(vts))
            .withColumn("row_id", F.monotonically_increasing_id())
            .join(known_ids, cid, "left")
            .withColumn("known", F.coalesce("known", F.lit(False))))
        counts = JoinCounts()
        row = clicks_seen.agg(F.count(F.lit(1)).alias("rows"), F.count_if("matched").alias("matched"),
                              F.countDistinct(F.when(F.col("matched"), F.col(k))).alias("keys"),
                              F.count_if(F.col(cts).isNull()).alias("no_ts")).first()
        _require_times(task, lay, "clicks", row["no_ts"])
        counts.clicks_in, counts.orphan_clicks = row["rows"], row["rows"] - row["matched"]
        counts.attributed_clicks, counts.duplicate_clicks = row["keys"], row["matched"] - row["keys"]
        row = conversions_seen.agg(F.count(F.lit(1)).alias("rows"),
                                   F.count_if(F.col(vts).isNull()).alias("no_ts")).first()
        _require_times(task, lay, "conversions", row["no_ts"])
        counts.conversions_in = row["rows"]

        # The earliest matched click per key is the attributed one; ties broken by click id.
        first_click = Window.partitionBy(k).orderBy(F.col(cts).asc_nulls_last(), F.col(cid).asc_nulls_last())
        attributed = keep(clicks_seen.where("matched").withColumn("rank", F.row_number().over(first_click))
                          .where("rank = 1").select(k, cid, cts))
        delay = F.col(vts) - F.col(cts)
        in_window = ((delay >= 0) & (delay <= window_us)).cast("int")
        classes = keep(
            conversions_seen.join(attributed.select(cid, cts), cid, "left")
            .groupBy("row_id", cid, "known")
            .agg(F.max(in_window).alias("in_window"), F.max((delay > window_us).cast("int")).alias("late"),
                 F.max(F.col(cts).isNotNull().cast("int")).alias("with_click"))
            .select(cid, F.when(F.col("in_window") == 1, "in_window").when(F.col("late") == 1, "late")
                    .when(F.col("with_click") == 1, "before_click").when(F.col("known"), "unattributed")
                    .otherwise("orphan").alias("class")))
        labels = (attributed.join(conversions_seen.select(cid, vts), cid, "left").groupBy(k)
                  .agg(F.coalesce(F.max(in_window), F.lit(0)).alias(_TMP + "converted")))

        first_impression = Window.partitionBy(_col(lay.impression_id)).orderBy(*_ascending(lay.impression_order))
        impressions = (frames["impressions"].withColumn(_TMP + "rank", F.row_number().over(first_impression))
                       .where(F.col(_TMP + "rank") == 1))
        output = impressions.join(labels, _col(lay.key) == F.col(k), "left")
        select = [_col(c) for c in lay.impression_columns]
        select += [F.col(k).isNotNull().cast("byte").alias("label_click"),
                   F.coalesce(F.col(_TMP + "converted"), F.lit(0)).cast("byte").alias("label_convert")]
        rid = _TMP + "rid"
        if lay.features:
            first_row = Window.partitionBy(_col(lay.request_id)).orderBy(*_ascending(lay.feature_order))
            features = (frames["feature_log"].withColumn(_TMP + "rank", F.row_number().over(first_row))
                        .where(F.col(_TMP + "rank") == 1)
                        .select(_col(lay.request_id).alias(rid),
                                *(_col(c).alias(f"{_TMP}f{i}") for i, (c, _) in enumerate(lay.features))))
            output = output.join(features, _col(lay.request_id) == F.col(rid), "left")
            select += [F.col(f"{_TMP}f{i}").alias(name) for i, (_, name) in enumerate(lay.features)]
        written = _write_one_file(output.select(*select), task.output)

        for row in classes.groupBy("class").agg(F.count(F.lit(1)).alias("rows"),
                                                F.countDistinct(cid).alias("clicks")).collect():
            if row["class"] == "in_window":
                counts.attributed_conversions = row["clicks"]
                counts.duplicate_conversions = row["rows"] - row["clicks"]
            else:
                setattr(counts, _CLASS_COUNTS[row["class"]], row["rows"])
        counts.impressions_in = frames["impressions"].count()
        if written is not None:
            result = spark.read.parquet(str(written))
            if lay.features:
                served = frames["feature_log"].select(_col(lay.request_id).alias(rid)).distinct()
                result = result.join(served.withColumn("served", F.lit(True)),
                                     _col(lay.request_id) == F.col(rid), "left")
            else:
                result = result.withColumn("served", F.lit(False))
            row = result.agg(F.count(F.lit(1)).alias("rows"), F.sum("label_click").alias("clicked"),
                             F.sum("label_convert").alias("converted"),
                             F.count_if(F.col("served").isNull() | ~F.col("served")).alias("unserved")).first()
            counts.rows_out, counts.impressions_without_features = row["rows"], row["unserved"]
            counts.clicked_impressions = int(row["clicked"] or 0)
            counts.converted_impressions = int(row["converted"] or 0)
        counts.duplicate_impressions = counts.impressions_in - counts.rows_out
        if lay.features:
            # Rows without a request id form one group, as in the deduplication window.
            row = frames["feature_log"].agg(
                F.count(F.lit(1)).alias("rows"), F.countDistinct(_col(lay.request_id)).alias("ids"),
                F.max(_col(lay.request_id).isNull().cast("int")).alias("no_id")).first()
            counts.feature_rows_in = row["rows"]
            counts.duplicate_feature_rows = row["rows"] - row["ids"] - (row["no_id"] or 0)
        if written is not None:
            written.replace(task.output)
        return counts
    finally:
        for frame in cached:
            frame.unpersist()
        shutil.rmtree(_spill_dir(task.output), ignore_errors=True)


def _require_times(task: JoinTask, lay: JoinLayout, table: str, missing: int) -> None:
    """Clicks and conversions must all have a time: the window cannot place them otherwise."""
    if missing:
        raise DataError(f"{table} ({task.inputs[table].path}): {missing} rows have no '{lay.ts}'")


def _write_one_file(frame, target: Path) -> Path | None:
    """Write `frame` as a single Parquet part file in a directory beside `target`; return
    the part file (None when Spark wrote no file because there are no rows)."""
    folder = _spill_dir(target)
    frame.coalesce(1).write.mode("overwrite").parquet(str(folder))
    parts = sorted(folder.glob("part-*.parquet"))
    return parts[0] if parts else None


def _spill_dir(target: Path) -> Path:
    return target.with_name(target.name + ".spark")


def _read(spark, source: InputFiles):
    if source.format == "csv":
        return spark.read.csv(list(source.files), header=True, inferSchema=True)
    return spark.read.option("mergeSchema", "true").parquet(*source.files)


def _kind(dtype) -> str:
    from pyspark.sql import types as T

    if isinstance(dtype, (T.ArrayType, T.MapType, T.StructType)):
        return NESTED
    if isinstance(dtype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return INTEGER
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        return FLOAT
    if isinstance(dtype, (T.StringType, T.VarcharType, T.CharType)):
        return STRING
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return TIMESTAMP
    return SCALAR


def _micros(lay: JoinLayout, table: str):
    """The table's event time as integer microseconds since the epoch."""
    from pyspark.sql import functions as F

    if lay.ts_kinds[table] == INTEGER:
        return _col(lay.ts).cast("long") * 1_000_000
    return F.unix_micros(_col(lay.ts).cast("timestamp"))


def _ascending(columns) -> list:
    return [_col(c).asc_nulls_last() for c in columns]


def _col(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
