"""Ali-CCP prepare throughput: generate raw files in the official format, prepare them,
print rows/s and peak memory.

    python bench/ali_ccp_prepare.py [--rows 1000000] [--keep DIR]

Writes `rows` skeleton samples (80% train, 20% test; ~12 packed features each, the
multi-valued 210/508/509/702/853 repeated) and one common-features line per ~58 samples
(~500 features each, mostly the 14-day behaviour fields; our estimate of the real files'
proportions), into a temp folder. Then, in a fresh child process so the numbers cover preparing only, runs the same
code as `data.source: ali_ccp` (both streamed passes, all 23 fields) and reports wall
time, samples per second, the child's peak RSS (ru_maxrss) and the in-memory size of the
common-features tables. Writes the numbers to `ali_ccp_prepare.json` beside this script.
Not a test: run it by hand, with nothing else heavy running.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# as in the real train set: 42.3M samples over ~0.73M common-feature lines, 3.9% clicked,
# 0.56% of clicks converted
SAMPLES_PER_COMMON, CLICK_RATE, CONVERSION_RATE = 58, 0.039, 0.0056
# field, fewest and most occurrences per line, number of distinct ids (drawn log-uniformly)
SKELETON_LAYOUT = [("205", 1, 1, 300_000), ("206", 1, 1, 6_000), ("207", 1, 1, 100_000), ("210", 1, 3, 50_000),
                   ("216", 1, 1, 100_000), ("508", 0, 3, 500_000), ("509", 0, 3, 500_000),
                   ("702", 0, 2, 300_000), ("853", 0, 3, 500_000), ("301", 1, 1, 3)]
COMMON_LAYOUT = [("101", 1, 1, 400_000), ("121", 1, 1, 100), ("122", 1, 1, 14), ("124", 1, 1, 3),
                 ("125", 1, 1, 8), ("126", 1, 1, 4), ("127", 1, 1, 4), ("128", 1, 1, 3), ("129", 1, 1, 5),
                 ("109_14", 50, 150, 10_000), ("110_14", 50, 250, 300_000), ("127_14", 50, 150, 150_000),
                 ("150_14", 50, 250, 100_000)]
VALUES = ["0.693147", "1.098612", "1.386294", "1.609438", "2.079442", "2.772589"]  # log(1 + count)
BATCH = 20_000


def feature_lists(rng, n: int, layout, offset: int) -> list[str]:
    """`n` packed feature lists: field \\x02 id \\x03 value, joined by \\x01."""
    per_field = []
    for k, (field, low, high, vocab) in enumerate(layout):
        counts = rng.integers(low, high + 1, n)
        ids = offset + k * 10_000_000 + np.floor(vocab ** rng.random(int(counts.sum()))).astype(np.int64)
        if high == 1:
            pieces = [f"{field}\x02{i}\x031.0" for i in ids.tolist()]
        else:
            values = rng.integers(0, len(VALUES), ids.size).tolist()
            pieces = [f"{field}\x02{i}\x03{VALUES[v]}" for i, v in zip(ids.tolist(), values)]
        per_field.append((pieces, np.r_[0, np.cumsum(counts)].tolist()))
    return ["\x01".join(piece for pieces, ends in per_field for piece in pieces[ends[j]:ends[j + 1]])
            for j in range(n)]


def generate(directory: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", rows * 4 // 5), ("test", rows - rows * 4 // 5)):
        commons = max(1, n // SAMPLES_PER_COMMON)
        keys = [hashlib.md5(f"{split}-{k}".encode()).hexdigest() for k in range(commons)]
        with open(directory / f"common_features_{split}.csv", "w") as out:
            for start in range(0, commons, BATCH // 40):  # ~40x the features of a sample per line
                lists = feature_lists(rng, min(BATCH // 40, commons - start), COMMON_LAYOUT, 1_000_000_000)
                out.writelines(f"{keys[start + j]},{lst.count(chr(1)) + 1},{lst}\n" for j, lst in enumerate(lists))
        with open(directory / f"sample_skeleton_{split}.csv", "w") as out:
            for start in range(0, n, BATCH):
                m = min(BATCH, n - start)
                click = rng.random(m) < CLICK_RATE
                conversion = click & (rng.random(m) < CONVERSION_RATE)
                which = rng.integers(0, commons, m)
                lists = feature_lists(rng, m, SKELETON_LAYOUT, 0)
                out.writelines(f"{start + j + 1},{int(click[j])},{int(conversion[j])},{keys[which[j]]},"
                               f"{lst.count(chr(1)) + 1},{lst}\n" for j, lst in enumerate(lists))


def prepare_in_this_process(directory: Path, out: Path) -> dict:
    from recsmith.data.prepare import prepare_tabular
    from recsmith.data.sources.ali_ccp import AliCcpOptions, AliCcpReader, ali_ccp_spec, raw_files

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    options = AliCcpOptions()
    reader = AliCcpReader(raw_files(directory), options.fields)
    start = time.perf_counter()
    schema = prepare_tabular(ali_ccp_spec(options, 20260127), reader, out, 0.001)
    wall = time.perf_counter() - start
    common_rows = sum(len(c) for c in reader.common.values())
    common_bytes = sum(c.nbytes for c in reader.common.values())
    return {"wall_s": round(wall, 2), "split_rows": schema.split_rows, "rows_rejected": schema.meta["rows_rejected"],
            "vocab_total": sum(schema.vocab_sizes), "peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "rss_after_imports_mb": round(before / 1024, 1),
            "common_rows": common_rows, "common_table_mb": round(common_bytes / 2**20, 1),
            "common_bytes_per_row": round(common_bytes / max(common_rows, 1), 1)}


def run_child(*args: str) -> str:
    child = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    if child.returncode:
        sys.exit(child.stderr)
    return child.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="write the raw files here and keep them")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)  # child: write raw files here
    parser.add_argument("--prepare", nargs=2, type=Path, help=argparse.SUPPRESS)  # child: raw dir, out dir
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.rows)
        return
    if args.prepare:
        print(json.dumps(prepare_in_this_process(*args.prepare)))
        return

    directory = args.keep or Path(tempfile.mkdtemp(prefix="ali-ccp-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # both steps in fresh children of this small process: a child's ru_maxrss starts from
        # its parent's footprint at fork, so the generator must not be that parent
        start = time.perf_counter()
        run_child("--rows", str(args.rows), "--generate", str(directory))
        generate_s = time.perf_counter() - start
        raw_mb = sum(p.stat().st_size for p in directory.glob("*.csv")) / 2**20
        result = json.loads(run_child("--prepare", str(directory), str(directory / "prepared")).splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    result = {"rows": args.rows, "raw_mb": round(raw_mb, 1), "generate_s": round(generate_s, 1), **result,
              "rows_per_s": round(args.rows / result["wall_s"]), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}"}
    print(f"prepared {args.rows:,} Ali-CCP samples ({raw_mb:,.0f} MB raw, {result['common_rows']:,} common-feature "
          f"rows) in {result['wall_s']:.1f} s: {result['rows_per_s']:,} rows/s over both passes; "
          f"peak RSS {result['peak_rss_mb']:,.0f} MB; common-features tables {result['common_table_mb']} MB "
          f"({result['common_bytes_per_row']:.0f} B/row)")
    (Path(__file__).with_suffix(".json")).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
