"""How many texts per minute does a fine-tuned text classifier score on this machine?
Over loopback HTTP (`recsmith serve`, one client sending its next request when the answer
arrived) for 1 and 32 texts per request, and in batch (`TextScorer.predict_texts` over the
whole test split, as `recsmith predict` runs it). Real test texts of the run's dataset.

    python bench/text_serve.py --run runs/sentiment_rt/LR_HIGH [--requests 200]

Writes bench/text_serve.json. A timing: run it on an otherwise idle machine (the client and
the service share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import latency, start_serving  # noqa: E402  (the ranking service bench's helpers)
from throughput import cpu_description  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="A finished text_classifier run (fine-tuned).")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "text_serve.json")
    args = parser.parse_args()
    from recsmith.serve.scorer import Scorer

    dataset = Path(json.loads((args.run / "eval.json").read_text())["dataset"])
    texts = pq.read_table(dataset / "test.parquet", columns=["text"])["text"].to_pylist()
    scorer = Scorer.load(args.run)
    scorer.predict_texts(texts[:64])  # warm-up
    started = time.perf_counter()
    scorer.predict_texts(texts)
    batch_seconds = time.perf_counter() - started

    service = start_serving(args.run, args.port)
    try:
        url = f"http://127.0.0.1:{args.port}/predict"
        levels = [latency(url, [{"text": t} for t in texts[i:i + size]], args.requests)
                  for i, size in ((0, 1), (100, 32))]
    finally:
        service.terminate()
        service.wait()
    for level in levels:
        level["texts_per_minute"] = round(level["candidates"] * 60_000 / level["p50_ms"])
    report = {"run": str(args.run), "torch": torch.__version__, "cpus": os.cpu_count(), "cpu": cpu_description(),
              "http": levels, "batch": {"texts": len(texts), "seconds": round(batch_seconds, 2),
                                        "texts_per_minute": round(len(texts) * 60 / batch_seconds)}}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for level in levels:
        print(f"HTTP, {level['candidates']:>2} text(s) per request: p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms "
              f"({level['texts_per_minute']:,} texts/min at p50)")
    print(f"batch: {len(texts):,} texts in {batch_seconds:.1f} s ({report['batch']['texts_per_minute']:,} texts/min)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
