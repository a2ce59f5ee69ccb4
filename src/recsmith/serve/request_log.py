"""The request log: every scored row with its raw features (cast to the model's raw schema),
`request_id`, its `candidate_position` among the request's candidates, `impression_id`
(`REQUEST_ID:POSITION`, the key click logs carry), `ts` (when it was served, UTC), the
`model` that scored it and `prob_<output>`. It replays through the scorer, feeds
`recsmith monitor`, and is the impressions input of `recsmith data join`.

Durability. A request's rows are written (write(2)) to an open segment, an Arrow IPC stream
named `.requests-*.arrows` (hidden from readers), before the request is answered: once an
answer has left, its rows are in the kernel, and killing the process (kill -9, the OOM
killer) loses none of them. Segments are fsync'ed every `fsync_seconds` (0: at every
request, before the answer), so an OS crash or power loss loses at most that window. Every
`seal_rows` rows or `seal_seconds`, a segment is sealed: rewritten as one Parquet file
(`requests-*.parquet`, written under a temporary name, fsync'ed, renamed) and removed. A
segment a crash left behind is sealed when the directory is next opened (`recover`),
keeping every complete batch.

Each schema gets its own segment (a canary may read other columns), so one file never
mixes schemas and no request can make another one's write fail. A failed write (a full
disk) loses nothing silently: the rows wait in memory and are retried in a new segment on
every tick; `stats()` (in /health) counts write errors and waiting rows, and only beyond
`max_waiting_rows` are the oldest dropped, counted and logged as errors.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsmith.atomic import replace_atomically
from recsmith.errors import ConfigError

log = logging.getLogger("recsmith.serve")

SEGMENT_GLOB = ".requests-*.arrows"
LOG_COLUMNS = ("request_id", "impression_id", "candidate_position", "ts", "model")  # then features, then prob_*
TICK_SECONDS = 1.0  # how often sealing and retries are looked at when fsync is per request


def check_loggable(names: list[str], service_columns: tuple[str, ...] = ()) -> None:
    """A model whose raw columns (or inputs) clash with the log's own columns cannot be logged."""
    own = LOG_COLUMNS + service_columns
    clash = [name for name in names if name in own or name.startswith("prob_")]
    if clash:
        raise ConfigError(f"the request log cannot hold the column(s) {', '.join(clash)}: they clash with "
                          f"its own columns ({', '.join(own)}, prob_*); serve without --log-dir")


def logged_rows(features: pa.Table, probs: dict[str, np.ndarray], request_id: str, model: str,
                served_at: float) -> pa.Table:
    """One request's log rows: the log's columns, the typed raw features, the probabilities."""
    columns = log_columns(features.num_rows, request_id, model, served_at)
    columns.update(zip(features.column_names, features.columns))
    columns.update({f"prob_{name}": pa.array(values, pa.float64()) for name, values in probs.items()})
    return pa.table(columns)


def log_columns(n: int, request_id: str, model: str, served_at: float) -> dict[str, pa.Array]:
    """The log's own columns (LOG_COLUMNS) of a request's `n` rows."""
    return {
        "request_id": pa.array([request_id] * n, pa.string()),
        "impression_id": pa.array([f"{request_id}:{p}" for p in range(n)], pa.string()),
        "candidate_position": pa.array(np.arange(n, dtype=np.int32)),
        "ts": pa.array(np.full(n, int(served_at * 1_000_000), np.int64), pa.timestamp("us")),
        "model": pa.array([model] * n, pa.string()),
    }


@dataclass
class _Segment:
    path: Path
    fd: int
    opened: float  # time.monotonic()
    rows: int = 0
    dirty: bool = False  # written since its last fsync


@dataclass
class _Stats:
    rows_written: int = 0  # into segments (in the kernel, at least)
    write_errors: int = 0
    rows_waiting: int = 0  # whose write failed, waiting in memory for a retry
    rows_dropped: int = 0  # beyond max_waiting_rows, or still unwritable at close
    unsealed: list[Path] = field(default_factory=list)  # segments whose Parquet write failed


class RequestLog:
    def __init__(self, directory: str | Path, fsync_seconds: float = 1.0, seal_rows: int = 10_000,
                 seal_seconds: float = 60.0, max_waiting_rows: int = 100_000):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync_seconds, self.seal_rows, self.seal_seconds = fsync_seconds, seal_rows, seal_seconds
        self.max_waiting_rows = max_waiting_rows
        recover(self.directory)
        self._segments: dict[pa.Schema, _Segment] = {}
        self._closing: list[_Segment] = []  # taken out of use, to be fsync'ed, closed and sealed
        self._waiting: list[pa.Table] = []
        self._stats = _Stats()
        self._new_names = False  # a segment was created since the directory was last fsync'ed
        # `_lock` guards segments, waiting rows and stats (re-entrant: a write error is counted
        # while a write holds it); `_sealing` is taken first, by one tick at a time (the
        # thread, flush, close): only a tick closes segments, so its fsyncs never meet a closed fd
        self._lock = threading.RLock()
        self._sealing = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="request-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ writing
    def append(self, table: pa.Table) -> None:
        """Write one request's rows (see `logged_rows`) before it is answered."""
        with self._lock:
            self._write_or_keep(table)

    def _write_or_keep(self, table: pa.Table) -> bool:
        try:
            self._write(table)
            return True
        except OSError as exc:
            self._stats.write_errors += 1
            log.error("request log: could not write %d rows (kept in memory, retried): %s", table.num_rows, exc)
            self._keep(table)
            return False

    def _write(self, table: pa.Table) -> None:
        segment = self._segments.get(table.schema)
        if segment is None:
            segment = self._segments[table.schema] = self._open(table.schema)
        # one batch: a retried table is all missing or all there, never half
        data = table.combine_chunks().to_batches()[0].serialize().to_pybytes()
        try:
            _write_all(segment.fd, data)
        except OSError:
            # a message may be half written: nothing more goes after it; its complete batches are sealed
            self._closing.append(self._segments.pop(table.schema))
            raise
        segment.rows += table.num_rows
        self._stats.rows_written += table.num_rows
        if self.fsync_seconds > 0:
            segment.dirty = True
        else:
            self._fsync(segment.fd)

    def _open(self, schema: pa.Schema) -> _Segment:
        name = f".requests-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}.arrows"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # `recover` in another process leaves it alone
            _write_all(fd, schema.serialize().to_pybytes())
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self.fsync_seconds > 0:
            self._new_names = True
        else:
            self._fsync_dir()
        return _Segment(path, fd, time.monotonic())

    def _keep(self, table: pa.Table) -> None:
        self._waiting.append(table)
        self._stats.rows_waiting += table.num_rows
        while self._stats.rows_waiting > self.max_waiting_rows:
            dropped = self._waiting.pop(0)
            self._stats.rows_waiting -= dropped.num_rows
            self._stats.rows_dropped += dropped.num_rows
            log.error("request log: dropped %d rows: more than %d rows wait for a write that keeps failing",
                      dropped.num_rows, self.max_waiting_rows)

    # ------------------------------------------------------------- background
    def _loop(self) -> None:
        while not self._stop.wait(self.fsync_seconds or TICK_SECONDS):
            self.tick()

    def tick(self, seal_all: bool = False) -> list[Path]:
        """Retry waiting rows, fsync what was written, seal segments that are due (every one
        with `seal_all`); returns the Parquet files written."""
        with self._sealing:
            with self._lock:
                waiting, self._waiting, self._stats.rows_waiting = self._waiting, [], 0
                for index, table in enumerate(waiting):
                    if not self._write_or_keep(table):
                        for rest in waiting[index + 1:]:  # still failing: the rest wait for the next tick
                            self._keep(rest)
                        break
                now = time.monotonic()
                due = [schema for schema, s in self._segments.items()
                       if seal_all or s.rows >= self.seal_rows or now - s.opened >= self.seal_seconds]
                self._closing += [self._segments.pop(schema) for schema in due]
                dirty = [s for s in self._segments.values() if s.dirty]
                for segment in dirty:
                    segment.dirty = False
                closing, self._closing = self._closing, []
                new_names, self._new_names = self._new_names, False
                unsealed, self._stats.unsealed = self._stats.unsealed, []
            # fsync and seal outside `_lock`: requests keep writing meanwhile
            for segment in dirty:
                self._fsync(segment.fd)
            if new_names:
                self._fsync_dir()
            for segment in closing:
                self._fsync(segment.fd)
                os.close(segment.fd)
            return [path for path in map(self._seal, [s.path for s in closing] + unsealed) if path]

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:  # the rows are written; writing them again could duplicate them
            with self._lock:
                self._stats.write_errors += 1
            log.error("request log: fsync failed: %s", exc)

    def _fsync_dir(self) -> None:
        try:
            _fsync_dir(self.directory)
        except OSError as exc:
            with self._lock:
                self._stats.write_errors += 1
            log.error("request log: fsync of the log directory failed: %s", exc)

    def _seal(self, segment: Path) -> Path | None:
        try:
            return seal_segment(segment)
        except (OSError, pa.ArrowException) as exc:  # the segment stays on disk; retried next tick
            with self._lock:
                self._stats.write_errors += 1
                self._stats.unsealed.append(segment)
            log.error("request log: could not seal %s (retried): %s", segment.name, exc)
            return None

    # ---------------------------------------------------------------- public
    def flush(self) -> list[Path]:
        """Seal every open segment now; returns the Parquet files written."""
        return self.tick(seal_all=True)

    def stats(self) -> dict:
        with self._lock:
            return {"rows_written": self._stats.rows_written, "write_errors": self._stats.write_errors,
                    "rows_waiting": self._stats.rows_waiting, "rows_dropped": self._stats.rows_dropped,
                    "segments_unsealed": len(self._stats.unsealed)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()
        with self._lock:
            if self._waiting:  # a last try found the disk still failing
                lost = sum(t.num_rows for t in self._waiting)
                self._stats.rows_dropped += lost
                self._stats.rows_waiting = 0
                self._waiting = []
                log.error("request log: %d rows could not be written before shutdown and are lost", lost)


# ------------------------------------------------------------------- segments
def read_segment(path: Path) -> pa.Table | None:
    """The complete batches of a segment (a crash may have torn the last one); None when
    not even its schema was written."""
    with pa.OSFile(str(path)) as handle:
        try:
            reader = pa.ipc.open_stream(handle)
        except (pa.ArrowInvalid, OSError):
            return None
        batches = []
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError):  # a torn tail
                break
        return pa.Table.from_batches(batches, schema=reader.schema)


def seal_segment(segment: Path) -> Path | None:
    """Rewrite a closed segment as `requests-*.parquet` beside it (durably), then remove it.
    Idempotent: a Parquet file already there (a crash between rename and removal) is kept."""
    target = segment.with_name(segment.name[1:].removesuffix(".arrows") + ".parquet")
    if not target.exists():
        table = read_segment(segment)
        if table is None or table.num_rows == 0:
            segment.unlink()
            return None
        replace_atomically(target, lambda tmp: pq.write_table(table, tmp))
        _fsync_dir(target.parent)
    segment.unlink()
    return target


def recover(directory: str | Path) -> list[Path]:
    """Seal the segments a stopped (or killed) service left in `directory`; segments another
    live service holds (locked) are left alone. Returns the Parquet files written."""
    sealed = []
    for segment in sorted(Path(directory).glob(SEGMENT_GLOB)):
        fd = os.open(segment, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            path = seal_segment(segment)
        finally:
            os.close(fd)
        if path:
            sealed.append(path)
            log.info("request log: recovered %s from an unsealed segment", path.name)
    return sealed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    """New names (a segment, a sealed file) survive power loss only once the directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
