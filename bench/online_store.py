"""How long does a sequence model's request take when its features come from the online store?
In process (no HTTP): per backend (embedded SQLite, Redis on loopback), p50/p99 over random
users of (1) the features of 100 candidates rebuilt from the store, (2) a ranker's scores of
100 candidates (the hybrid: store reads, explicit features, DIN's 65 columns, LightGBM) and
(3) a recommender's top 100 over the whole catalogue (store read, one-user history, the
model). Beside them, the offline builder's features of 100 candidates from the dataset in
memory: what the store path adds.

    python bench/online_store.py --ranker runs/ml100k_seq_models/HYBRID --recommender runs/ml100k_seq_models/SASREC

Writes bench/online_store.json. A timing: run it on an otherwise idle machine. Redis: a
`redis-server` on PATH is started on a free loopback port (or pass --redis URL).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import cpu_description  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> dict:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "requests": len(ms)}


def timed(fn, calls: list) -> dict:
    for args in calls[:20]:  # warm-up
        fn(*args)
    samples = []
    for args in calls:
        start = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def start_redis() -> tuple[str, subprocess.Popen] | None:
    server = shutil.which("redis-server")
    if not server:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"redis://127.0.0.1:{port}/0", process
        except OSError:
            time.sleep(0.05)
    process.terminate()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranker", type=Path, required=True, help="A din, lightgbm or hybrid run.")
    parser.add_argument("--recommender", type=Path, required=True, help="A sasrec, gru4rec, narm or avgpool run.")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--redis", help="A Redis URL (default: start redis-server on a free port)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "online_store.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a serving worker's share of a small machine
    from recsmith.data.sequence_dataset import SequenceDataset
    from recsmith.online.features import OnlineFeatures
    from recsmith.online.materialize import dataset_of_run, materialize
    from recsmith.online.scoring import SequenceService
    from recsmith.online.store import open_store

    dataset_dir = dataset_of_run(args.ranker)
    dataset = SequenceDataset.load(dataset_dir)
    log, raw = dataset.log, dataset.raw_ids()
    rng = np.random.default_rng(0)
    users = rng.integers(1, log.num_users + 1, args.requests)
    now = int(log.ts.max()) + 1
    candidates = [rng.choice(np.arange(1, log.num_items + 1), args.candidates, replace=False) for _ in users]
    builder = dataset.feature_builder()
    last = log.user_start[users + 1] - 1  # each user's last event: the offline builder's nearest "request"
    results = {"machine": cpu_description(), "torch_threads": 1, "requests": args.requests,
               "candidates": args.candidates, "ranker": str(args.ranker), "recommender": str(args.recommender),
               "offline_features_in_memory": timed(lambda e, c: builder.features(np.full(len(c), e), c),
                                                   list(zip(last, candidates))),
               "backends": {}}
    redis = None if args.redis else start_redis()
    uris = {"sqlite": f"sqlite:///{tempfile.mkdtemp()}/store.db"}
    if args.redis or redis:
        uris["redis"] = f"{args.redis or redis[0]}?prefix=bench"
    try:
        for backend, uri in uris.items():
            store = open_store(uri)
            start = time.perf_counter()
            manifest = materialize(dataset_dir, store)
            written = time.perf_counter() - start
            features, ranker = OnlineFeatures(store), SequenceService(args.ranker, store)
            recommender = SequenceService(args.recommender, store)
            item_raw = [[raw["item_id"][i] for i in c] for c in candidates]
            calls = [(raw["user_id"][u], now, c) for u, c in zip(users, candidates)]
            results["backends"][backend] = {
                "materialize_s": round(written, 2), "records": manifest["users"] + manifest["items"] + 1,
                "features": timed(lambda u, t, c: features.features(u, t, c), calls),
                f"{ranker.architecture}_predict": timed(ranker.predict, [(u, t, r) for (u, t, _), r in
                                                                         zip(calls, item_raw)]),
                f"{recommender.architecture}_recommend_top100": timed(lambda u, t: recommender.recommend(u, t, 100),
                                                                       [(u, t) for u, t, _ in calls])}
            print(backend, json.dumps(results["backends"][backend]))
            store.close()
    finally:
        if redis:
            redis[1].terminate()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
