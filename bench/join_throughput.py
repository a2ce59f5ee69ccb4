"""Sample-join throughput: generate ad logs, time `run_join`, print rows/s.

    python bench/join_throughput.py [--impressions 10000000] [--engine duckdb] [--keep DIR]

Generates N impressions (0.5% logged twice), 5% clicked (10% of those clicked twice, plus
1% orphan clicks), conversions on 10% of clicks (some late, early, repeated or orphan)
and a feature log of 12 features for 95% of requests, as Parquet in a temp folder with
numpy/pyarrow; then times the join (engine start-up included) and writes the numbers to
`join_throughput.json` beside this script. Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsmith.data.join import JoinDefinition, run_join

WINDOW = 7 * 86400
START = 1_767_225_600  # 2026-01-01 00:00:00 UTC


def generate(directory: Path, impressions: int, seed: int = 0) -> dict[str, str]:
    """Write the four logs under `directory`; return their paths."""
    rng = np.random.default_rng(seed)
    n = impressions
    request_id = np.arange(n, dtype=np.int64) * 7 // 10  # ~1.4 impressions per request
    ts = START + np.sort(rng.integers(0, 30 * 86400, n))
    imps = {"request_id": request_id, "impression_id": np.arange(n, dtype=np.int64),
            "ts": ts.astype("datetime64[s]").astype("datetime64[us]"),
            "user_id": rng.integers(0, 2_000_000, n), "ad_id": rng.integers(0, 100_000, n).astype(np.int32),
            "slot": rng.integers(0, 8, n).astype(np.int8), "bid": rng.random(n, dtype=np.float32)}
    again = rng.choice(n, n // 200, replace=False)  # logged twice, 1-60 s apart
    table = pa.table(imps)
    dup = table.take(again).set_column(2, "ts", pa.array(
        (ts[again] + rng.integers(1, 60, again.size)).astype("datetime64[s]").astype("datetime64[us]")))
    folder = directory / "impressions"
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(n), 4)):  # a folder of files, as logs arrive
        pq.write_table(table.take(part), folder / f"part-{i}.parquet")
    pq.write_table(dup, folder / "part-dup.parquet")

    clicked = rng.choice(n, n // 20, replace=False)
    twice = clicked[: clicked.size // 10]
    click_imp = np.concatenate([clicked, twice, n + np.arange(n // 100)])  # last: orphan clicks
    click_ts = np.concatenate([ts[clicked] + rng.integers(0, 600, clicked.size),
                               ts[twice] + rng.integers(600, 3600, twice.size),
                               START + rng.integers(0, 30 * 86400, n // 100)])
    click_id = np.arange(click_imp.size, dtype=np.int64)
    pq.write_table(pa.table({"click_id": click_id, "impression_id": click_imp, "ts": click_ts}),
                   directory / "clicks.parquet")

    converting = rng.choice(clicked.size, clicked.size // 10, replace=False)
    delay = rng.choice([60, 3600, 86400, 3 * 86400, WINDOW, WINDOW + 1, 30 * 86400, -60], converting.size,
                       p=[.25, .25, .2, .1, .05, .05, .05, .05])
    repeat = converting[: converting.size // 20]
    conv_click = np.concatenate([converting, repeat, click_id.size + np.arange(converting.size // 50)])
    conv_ts = np.concatenate([click_ts[converting] + delay, click_ts[repeat] + 120,
                              START + rng.integers(0, 30 * 86400, converting.size // 50)])
    pq.write_table(pa.table({"conversion_id": np.arange(conv_click.size, dtype=np.int64),
                             "click_id": conv_click, "ts": conv_ts}), directory / "conversions.parquet")

    requests = np.unique(request_id)
    served = requests[rng.random(requests.size) < 0.95]
    served_at = START + rng.integers(0, 30 * 86400, served.size)
    features = {"request_id": served, "ts": served_at.astype("datetime64[s]").astype("datetime64[us]")}
    for j in range(8):
        features[f"f_dense_{j}"] = rng.random(served.size, dtype=np.float32)
    for j in range(4):
        features[f"f_bucket_{j}"] = rng.integers(0, 1000, served.size).astype(np.int32)
    pq.write_table(pa.table(features), directory / "feature_log.parquet")
    return {"impressions": str(folder), "clicks": str(directory / "clicks.parquet"),
            "conversions": str(directory / "conversions.parquet"),
            "feature_log": str(directory / "feature_log.parquet")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--engine", default="duckdb", choices=["duckdb", "spark"])
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    directory = args.keep or Path(tempfile.mkdtemp(prefix="recsmith-join-bench-"))
    try:
        started = time.perf_counter()
        paths = generate(directory / "logs", args.impressions)
        generated = time.perf_counter() - started
        size = sum(f.stat().st_size for f in (directory / "logs").rglob("*.parquet"))
        print(f"generated {args.impressions:,} impressions ({size / 2**20:.0f} MiB Parquet) in {generated:.1f} s")
        definition = JoinDefinition(**paths, output=str(directory / "samples.parquet"), attribution_window=WINDOW,
                                    feature_prefix="", engine=args.engine)
        started = time.perf_counter()
        report = run_join(definition)
        wall = time.perf_counter() - started
        result = {"engine": args.engine, "impressions": args.impressions, "wall_seconds": round(wall, 2),
                  "impressions_per_second": round(report.impressions_in / wall),
                  "output_mib": round(Path(report.output).stat().st_size / 2**20, 1),
                  "cpus": os.cpu_count(), "machine": platform.platform(), "report": report.to_dict()}
        print(f"{args.engine}: joined {report.impressions_in:,} impressions → {report.rows_out:,} samples "
              f"in {wall:.1f} s = {result['impressions_per_second']:,} impressions/s "
              f"({report.clicked_impressions:,} clicked, {report.converted_impressions:,} converted) "
              f"on {os.cpu_count()} CPUs")
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
