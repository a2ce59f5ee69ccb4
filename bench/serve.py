"""Scoring-service latency and throughput on this machine, over loopback HTTP.

The service runs in its own process (`recsmith serve`, torch threads as given); the load
comes from this process: a closed loop of `--clients` concurrent connections, each sending
its next request when the previous answer arrived (bounded: a fixed duration per level).

    python bench/serve.py                       # trains a small model of the default architecture first
    python bench/serve.py --run RUN_DIR         # or serves a finished ranking run

Reports p50 / p99 latency of one client for 1 and 100 candidates per request, then the
predictions per second sustained at increasing concurrency (100 candidates per request),
with the 503 and error counts and the CPU cores the service and the client used at each
level; each for the candidates sent as rows and as columns. Writes bench/serve.json. Run it on an otherwise
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


def start_service(run: Path, port: int, threads: int, max_pending: int, batch_wait_ms: float = 0.0,
                  backend: str = "torch") -> subprocess.Popen:
    return start_serving(run, port, "--threads", str(threads), "--max-pending", str(max_pending),
                         "--batch-wait-ms", str(batch_wait_ms), "--backend", backend)


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


def encoded(rows: list[dict], form: str) -> bytes:
    """A request body, encoded once (the load generator re-sends the same bytes, as wrk or
    locust would; what is measured is the service): the candidates as `rows` (objects) or
    `columns` (one list per field)."""
    if form == "rows":
        return json.dumps({"rows": rows}).encode()
    return json.dumps({"columns": {name: [row[name] for row in rows] for name in rows[0]}}).encode()


JSON = {"content-type": "application/json"}


def latency(url: str, rows: list[dict], requests: int, form: str = "rows") -> dict:
    """One client, one request at a time: milliseconds per request."""
    times, body = [], encoded(rows, form)
    with httpx.Client() as client:
        for _ in range(20):  # warm-up
            client.post(url, content=body, headers=JSON).raise_for_status()
        for _ in range(requests):
            started = time.perf_counter()
            client.post(url, content=body, headers=JSON).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"form": form, "candidates": len(rows), "requests": requests, "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2), "mean_ms": round(statistics.fmean(times), 2)}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sustained(url: str, rows: list[dict], clients: int, seconds: float, service_pid: int | None = None,
              form: str = "rows") -> dict:
    """`clients` closed loops for `seconds`: predictions per second, what went wrong, and the
    CPU the service and this (client) process used: on 2 cores they share, the client's share
    is what the service could not have."""
    counts, body = {"ok": 0, "overloaded": 0, "errors": 0}, encoded(rows, form)
    times: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop() -> None:
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    status = client.post(url, content=body, headers=JSON).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    key = "ok" if status == 200 else "overloaded" if status == 503 else "errors"
                    counts[key] += 1
                    if status == 200:
                        times.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    service_cpu, client_cpu = cpu_seconds(service_pid) if service_pid else None, cpu_seconds(os.getpid())
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if service_cpu is not None:
        service_cpu = round((cpu_seconds(service_pid) - service_cpu) / elapsed, 2)
    if client_cpu is not None:
        client_cpu = round((cpu_seconds(os.getpid()) - client_cpu) / elapsed, 2)
    times.sort()
    return {"form": form, "clients": clients, "candidates": len(rows), "seconds": round(elapsed, 2), **counts,
            "service_cores": service_cpu, "client_cores": client_cpu,
            "predictions_per_s": round(counts["ok"] * len(rows) / elapsed),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2) if times else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished ranking run (default: train a small one)")
    parser.add_argument("--threads", type=int, default=1, help="the service's torch threads")
    parser.add_argument("--requests", type=int, default=500, help="requests per latency measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput level")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrency levels for throughput")
    parser.add_argument("--forms", default="rows,columns", help="request forms to measure: rows, columns")
    parser.add_argument("--backend", default="torch", help="torch, or onnx (the run is exported first)")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0, help="the service's micro-batch wait")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "serve.json")
    args = parser.parse_args()
    forms = args.forms.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("RECSMITH_CACHE", str(Path(tmp) / "cache"))
        run = args.run or train_small_run(Path(tmp))
        rows = request_rows(run, 100)
        from recsmith.serve.server import free_port

        served = run
        if args.backend == "onnx":
            from recsmith.serve.export import export_run

            served = Path(export_run(run, "onnx", Path(tmp) / "onnx", parity_rows=2000)["out"])
        port = free_port()
        service = start_service(served, port, args.threads, 64, args.batch_wait_ms, args.backend)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            latencies = [latency(url, rows[:n], args.requests, form) for form in forms for n in (1, 100)]
            levels = [sustained(url, rows, int(c), args.seconds, service.pid, form)
                      for form in forms for c in args.clients.split(",")]
        finally:
            service.terminate()
            service.wait(timeout=30)
    best = {}
    for form in forms:
        mine = [level for level in levels if level["form"] == form]
        clean = [level for level in mine if level["errors"] == 0 and level["overloaded"] == 0]
        top = max(clean or mine, key=lambda level: level["predictions_per_s"])
        best[form] = {"predictions_per_s": top["predictions_per_s"], "clients": top["clients"], "p99_ms": top["p99_ms"]}
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu_cores": os.cpu_count(), "service_threads": args.threads,
              "batch_wait_ms": args.batch_wait_ms, "backend": args.backend,
              "model": "configs/base/mtl_funnel.yaml architecture (DeepFM shared-bottom, ctr + cvr)" if not args.run
              else str(args.run), "latency": latencies, "throughput": levels, "max_sustained": best}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'form':>8} {'candidates':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in latencies:
        print(f"{row['form']:>8} {row['candidates']:>10} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}")
    print(f"{'form':>8} {'clients':>8} {'pred/s':>9} {'p99 ms':>8} {'503':>5} {'errors':>6} {'service cores':>14} "
          f"{'client cores':>13}")
    for level in levels:
        print(f"{level['form']:>8} {level['clients']:>8} {level['predictions_per_s']:>9,} {level['p99_ms'] or 0:>8.2f} "
              f"{level['overloaded']:>5} {level['errors']:>6} {level['service_cores'] or 0:>14.2f} "
              f"{level['client_cores'] or 0:>13.2f}")
    for form, top in best.items():
        print(f"max sustained ({form}): {top['predictions_per_s']:,} predictions/s ({top['clients']} clients, "
              "100 per request)")


if __name__ == "__main__":
    main()
