"""AUC and GAUC on 10M predictions (float32 probabilities, 5% positives, 100k users).
A script, not a test: `python bench/metrics_speed.py`; the target is < 2 s each on one
core of this project's 2-core machine. Writes bench/metrics_speed.json."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from recsmith.metrics import auc, gauc


def main(n: int = 10_000_000) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(n) < 0.05).astype(np.int8)
    scores = (1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.5 * labels)))).astype(np.float32)
    users = rng.integers(0, 100_000, n).astype(np.int32)
    results = {}
    for name, call in (("auc", lambda: auc(labels, scores)), ("gauc", lambda: gauc(labels, scores, users))):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            value = call()
            times.append(time.perf_counter() - started)
        results[name] = {"seconds_best": round(min(times), 3), "seconds_all": [round(t, 3) for t in times],
                         "value": value}
        print(f"{name}: {min(times):.2f} s (best of 3) on {n:,} predictions, value {value:.6f}")
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps({"predictions": n, "machine": platform.platform(), **results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
