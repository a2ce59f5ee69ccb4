"""What the service's body limit and durable request log cost, over loopback HTTP.

    python bench/serve_guards.py --run RUN_DIR      # a finished ranking run (or: trains a small one)
    python bench/serve_guards.py --only body         # the body part alone (runs on older versions too)

1. An oversized body: a 146 MB JSON request (rows of the run's test split, repeated), sent
   as fast as the socket takes it, once with Content-Length and once chunked: seconds until
   the service answers, the status, the bytes the client got to send, and the service's peak
   resident memory (VmHWM) after each.
2. The request log: p50 / p99 latency of one client (1 and 100 candidates per request)
   without a log, with the log fsync'ed every second (the default), and with an fsync before
   every answer (--log-fsync-seconds 0).

Each service runs in its own process with one torch thread. Writes bench/serve_guards.json.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from serve import latency, request_rows, start_serving, train_small_run  # noqa: E402

BODY_BYTES = 146_000_000
SLICE = 1 << 20


def start(run: Path, port: int, *extra: str) -> subprocess.Popen:
    return start_serving(run, port, "--threads", "1", *extra)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def oversized(port: int, body: bytes, chunked: bool) -> dict:
    """Send `body` until the service answers; what it answered, when, after how many bytes."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    sent = 0
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(head.encode())
        for offset in range(0, len(body), SLICE):
            if select.select([sock], [], [], 0)[0]:
                break
            piece = body[offset:offset + SLICE]
            try:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except (socket.timeout, ConnectionResetError):
            answer = b""
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else None
    return {"framing": "chunked" if chunked else "content-length", "status": status,
            "seconds": round(time.perf_counter() - started, 3), "body_mb_sent": round(sent / 1e6, 1)}


def body_part(run: Path, rows: list[dict]) -> dict:
    from recsmith.serve.server import free_port

    row = json.dumps(rows[0]).encode()
    body = b'{"rows":[' + b",".join([row] * (BODY_BYTES // (len(row) + 1))) + b"]}"
    port = free_port()
    service = start(run, port)
    try:
        before = peak_rss_mb(service.pid)
        results = []
        for chunked in (False, True):
            results.append({**oversized(port, body, chunked), "service_peak_rss_mb_after": peak_rss_mb(service.pid)})
        healthy = httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        service.terminate()
        service.wait(timeout=30)
    return {"body_mb": round(len(body) / 1e6, 1), "service_peak_rss_mb_before": before, "requests": results,
            "healthy_after": healthy}


def log_part(run: Path, rows: list[dict], requests: int, workdir: Path) -> list[dict]:
    from recsmith.serve.server import free_port

    results = []
    for mode, extra in (("no log", ()), ("fsync every 1 s", ("--log-dir", str(workdir / "log-1s"))),
                        ("fsync per request", ("--log-dir", str(workdir / "log-0"), "--log-fsync-seconds", "0"))):
        port = free_port()
        service = start(run, port, *extra)
        try:
            url = f"http://127.0.0.1:{port}/predict"
            for measured in (latency(url, rows[:1], requests), latency(url, rows, requests)):
                results.append({"log": mode, **measured})
        finally:
            service.terminate()
            service.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished ranking run (default: train a small one)")
    parser.add_argument("--requests", type=int, default=500, help="requests per latency measurement")
    parser.add_argument("--only", choices=("body", "log"), help="measure one part only")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "serve_guards.json")
    args = parser.parse_args()

    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("RECSMITH_CACHE", str(Path(tmp) / "cache"))
        run = args.run or train_small_run(Path(tmp))
        result["model"] = str(args.run) if args.run else "configs/base/mtl_funnel.yaml architecture, briefly trained"
        rows = request_rows(run, 100)
        if args.only != "log":
            result["oversized_body"] = body_part(run, rows)
        if args.only != "body":
            result["request_log_latency"] = log_part(run, rows, args.requests, Path(tmp))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if "oversized_body" in result:
        part = result["oversized_body"]
        print(f"{part['body_mb']} MB body; service peak RSS before: {part['service_peak_rss_mb_before']} MB")
        for r in part["requests"]:
            print(f"  {r['framing']:>14}: {r['status']} after {r['seconds']:.3f} s, {r['body_mb_sent']} MB sent, "
                  f"peak RSS {r['service_peak_rss_mb_after']} MB")
    if "request_log_latency" in result:
        print(f"{'log':>18} {'candidates':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for r in result["request_log_latency"]:
            print(f"{r['log']:>18} {r['candidates']:>10} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")


if __name__ == "__main__":
    main()
