"""Scoring-service latency and throughput on this machine, over loopback HTTP.

The service runs in its own process (`recsmith serve`, torch threads as given); the load
comes from this process: a closed loop of `--clients` concurrent connections, each sending
its next request when the previous answer arrived (bounded: a fixed duration per level).

    python bench/serve.py                       # trains a small model of the default architecture first
    python bench/serve.py --run RUN_DIR         # or serves a finished ranking run

Reports p50 / p99 latency of one client for 1 and 100 candidates per request, then the
predictions per second sustained at increasing concurrency (100 candidates per request),
with the 503 and error counts at each level. Writes bench/serve.json. Run it on an otherwise
idle machine: it is a timing, and the client and the service share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def train_small_run(workdir: Path) -> Path:
    """The default model architecture (configs/base/mtl_funnel.yaml), briefly trained: latency
    depends on the architecture and the features, not on how long it trained."""
    run = workdir / "run"
    subprocess.run([sys.executable, "-m", "recsmith", "train", str(REPO / "configs/base/mtl_funnel.yaml"),
                    "--run-dir", str(run), "--set", "data.synthetic.rows=200000", "--set", "runtime.max_train_steps=200",
                    "--set", "lr_scheduler.total_steps=200", "--set", "runtime.eval_every_steps=200"],
                   check=True, env={**os.environ, "RECSMITH_NO_PROGRESS": "1"}, capture_output=True)
    return run


def request_rows(run: Path, count: int) -> list[dict]:
    from conftest import raw_synthetic_rows

    dataset = Path(json.loads((run / "eval.json").read_text())["dataset"])
    return raw_synthetic_rows(dataset).slice(0, count).to_pylist()


def start_service(run: Path, port: int, threads: int, max_pending: int) -> subprocess.Popen:
    return start_serving(run, port, "--threads", str(threads), "--max-pending", str(max_pending))


def start_serving(run: Path, port: int, *options: str) -> subprocess.Popen:
    """`recsmith serve --model RUN --port PORT OPTIONS` in a child process, once it answers /health."""
    process = subprocess.Popen([sys.executable, "-m", "recsmith", "serve", "--model", str(run), "--port", str(port),
                                *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
        if process.poll() is not None:
            raise RuntimeError(f"the service exited: {process.stderr.read()}")
    raise RuntimeError("the service did not come up in 120 s")


def latency(url: str, rows: list[dict], requests: int) -> dict:
    """One client, one request at a time: milliseconds per request."""
    times = []
    with httpx.Client() as client:
        for _ in range(20):  # warm-up
            client.post(url, json={"rows": rows}).raise_for_status()
        for _ in range(requests):
            started = time.perf_counter()
            client.post(url, json={"rows": rows}).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"candidates": len(rows), "requests": requests, "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2), "mean_ms": round(statistics.fmean(times), 2)}


def sustained(url: str, rows: list[dict], clients: int, seconds: float) -> dict:
    """`clients` closed loops for `seconds`: predictions per second and what went wrong."""
    counts = {"ok": 0, "overloaded": 0, "errors": 0}
    times: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop() -> None:
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    status = client.post(url, json={"rows": rows}).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    key = "ok" if status == 200 else "overloaded" if status == 503 else "errors"
                    counts[key] += 1
                    if status == 200:
                        times.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    times.sort()
    return {"clients": clients, "candidates": len(rows), "seconds": round(elapsed, 2), **counts,
            "predictions_per_s": round(counts["ok"] * len(rows) / elapsed),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2) if times else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished ranking run (default: train a small one)")
    parser.add_argument("--threads", type=int, default=1, help="the service's torch threads")
    parser.add_argument("--requests", type=int, default=500, help="requests per latency measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput level")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrency levels for throughput")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "serve.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("RECSMITH_CACHE", str(Path(tmp) / "cache"))
        run = args.run or train_small_run(Path(tmp))
        rows = request_rows(run, 100)
        from recsmith.serve.server import free_port

        port = free_port()
        service = start_service(run, port, args.threads, max_pending=64)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            single = latency(url, rows[:1], args.requests)
            hundred = latency(url, rows, args.requests)
            levels = [sustained(url, rows, int(c), args.seconds) for c in args.clients.split(",")]
        finally:
            service.terminate()
            service.wait(timeout=30)
    clean = [level for level in levels if level["errors"] == 0 and level["overloaded"] == 0]
    best = max(clean or levels, key=lambda level: level["predictions_per_s"])
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu_cores": os.cpu_count(), "service_threads": args.threads,
              "model": "configs/base/mtl_funnel.yaml architecture (DeepFM shared-bottom, ctr + cvr)" if not args.run
              else str(args.run), "latency": [single, hundred], "throughput": levels,
              "max_sustained_predictions_per_s": best["predictions_per_s"], "at_clients": best["clients"]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'candidates':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in (single, hundred):
        print(f"{row['candidates']:>10} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}")
    print(f"{'clients':>8} {'pred/s':>9} {'p99 ms':>8} {'503':>5} {'errors':>6}")
    for level in levels:
        print(f"{level['clients']:>8} {level['predictions_per_s']:>9,} {level['p99_ms'] or 0:>8.2f} "
              f"{level['overloaded']:>5} {level['errors']:>6}")
    print(f"max sustained: {best['predictions_per_s']:,} predictions/s ({best['clients']} clients, 100 per request)")


if __name__ == "__main__":
    main()
