"""`experiment_tracker.csv`: one row per run (single, chain or sweep), across all runs.

Appends are safe when several processes finish at once: the file is locked (flock) for
the whole read-extend-write, and a row bringing a column the file does not have yet
rewrites the file, atomically, with the wider header (older rows get empty cells).
Columns: FIRST_COLUMNS, the other settings sorted, then the metrics in the summary's
order (recsmith.experiments.columns), whatever the tasks are called.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
from pathlib import Path

from recsmith.atomic import write_text_atomic
from recsmith.experiments.columns import ORACLE, ordered_metrics, split_name

FIRST_COLUMNS = ("run_id", "time", "name", "status", "duration_s", "config_hash", "run_dir")
DEFAULT_PATH = Path("runs") / "experiment_tracker.csv"


def tracker_path() -> Path:
    """$RECSMITH_TRACKER, else runs/experiment_tracker.csv under the working directory."""
    return Path(os.environ.get("RECSMITH_TRACKER") or DEFAULT_PATH)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def key_hyperparameters(cfg) -> dict:
    """The settings a reader scans a tracker for."""
    from recsmith.plugins import family_of

    return {
        "model.family": cfg.model.family,
        **family_of(cfg).key_hyperparameters(cfg),
        "data.batch_size": cfg.data.batch_size,
        "optim.dense.lr": cfg.optim.dense.lr,
        "optim.sparse.lr": cfg.optim.sparse.lr,
        "embedding.dim": cfg.embedding.default_embedding_dim,
        "runtime.max_train_steps": cfg.runtime.max_train_steps,
        "runtime.seed": cfg.runtime.seed,
    }


def append_row(path: str | Path, row: dict) -> None:
    """Append one run's row (columns in the order the module docstring gives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            rows, header = read_rows(path), _header_of(path)
            new = [k for k in row if k not in header]
            if not header or new:
                header = _order([*header, *new])
                rows.append(row)
                write_text_atomic(path, _csv(header, rows))
            else:
                with open(path, "a", encoding="utf-8", newline="") as out:
                    csv.DictWriter(out, fieldnames=header, lineterminator="\n").writerow(_cells(row))
                    out.flush()
                    os.fsync(out.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _header_of(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def _order(columns: list[str]) -> list[str]:
    first = [c for c in FIRST_COLUMNS if c in columns]
    metrics = [c for c in columns if c not in FIRST_COLUMNS and (split_name(c)[0] or c.startswith(ORACLE))]
    rest = sorted(c for c in columns if c not in FIRST_COLUMNS and c not in metrics)
    return first + rest + ordered_metrics(metrics)


def _cells(row: dict) -> dict:
    return {k: "" if v is None else (f"{v:.10g}" if isinstance(v, float) else v) for k, v in row.items()}


def _csv(header: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_cells(r) for r in rows)
    return buffer.getvalue()
