"""Request and feature logging for replay: every scored row, with the raw features as they
were served, the model that scored it and its probabilities, appended to Parquet files.

Rows are buffered in memory and written by a background thread every `flush_rows` rows or
`flush_seconds`, each file written under a temporary name and renamed, so a reader (replay,
`recsmith monitor`) only ever sees complete files.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("recsmith.serve")


class RequestLog:
    def __init__(self, directory: str | Path, flush_rows: int = 10_000, flush_seconds: float = 5.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="request-log", daemon=True)
        self._thread.start()

    def append(self, table: pa.Table) -> None:
        with self._lock:
            self._pending.append(table)
            self._rows += table.num_rows
            if self._rows >= self.flush_rows:
                self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> Path | None:
        """Write what is buffered to one new Parquet file; returns its path (None if empty)."""
        with self._lock:
            tables, self._pending, self._rows = self._pending, [], 0
        if not tables:
            return None
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
            name = f"requests-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = self.directory / f".{name}.tmp"
            pq.write_table(table, tmp)
            tmp.rename(self.directory / name)
            return self.directory / name
        except (OSError, pa.ArrowException) as exc:  # logging must never take the service down
            log.error("request log: could not write %d rows: %s", sum(t.num_rows for t in tables), exc)
            return None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
