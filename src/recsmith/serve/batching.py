"""Micro-batching: concurrent requests scored in one model call.

Requests hand their (already cast) tables to one inference thread and wait. The thread takes
the first waiting request, then gathers more for at most `max_wait_s` or until `max_rows`
rows, and scores every request of the same model in one `predict_table` on the concatenated
table (encoding and the forward pass cost much less per row at a few hundred rows than at
one request's hundred). Under load, requests that arrived while a batch ran are the next
batch, so batches grow with concurrency even at `max_wait_s = 0`.

Each request gets its own rows' outputs back. If a batch fails (one request's malformed
row), its requests are scored one by one, so each gets its own answer or its own error, with
row numbers that are its own.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

_STOP = object()


@dataclass
class _Pending:
    scorer: object
    table: pa.Table
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


def _settle(future: asyncio.Future, result, error: Optional[BaseException]) -> None:
    if future.cancelled():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class MicroBatcher:
    """One inference thread scoring what concurrent requests submit (module docstring)."""

    def __init__(self, max_wait_s: float = 0.0, max_rows: int = 4096):
        self.max_wait_s, self.max_rows = max_wait_s, max_rows
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self.batches = 0  # model calls so far
        self.requests = 0  # requests they answered

    async def score(self, scorer, table: pa.Table) -> dict[str, np.ndarray]:
        """`scorer.predict_table(table)`, computed in a batch with whatever else is waiting."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Pending(scorer, table, loop, future))
        return await future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            by_model: dict[int, list[_Pending]] = {}
            for pending in batch:
                by_model.setdefault(id(pending.scorer), []).append(pending)
            for group in by_model.values():
                self._score(group)
            if stop:
                return

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """`first` and what arrives within the wait, up to `max_rows`; True when told to stop."""
        batch, rows = [first], first.table.num_rows
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
            rows += item.table.num_rows
        return batch, False

    def _score(self, group: list[_Pending]) -> None:
        scorer = group[0].scorer
        self.batches += 1
        self.requests += len(group)
        try:
            if len(group) == 1:
                outputs = [scorer.predict_table(group[0].table)]
            else:
                probs = scorer.predict_table(pa.concat_tables([p.table for p in group]))
                bounds = np.cumsum([0] + [p.table.num_rows for p in group])
                outputs = [{name: values[start:end] for name, values in probs.items()}
                           for start, end in zip(bounds[:-1], bounds[1:])]
        except Exception as error:  # noqa: BLE001 - handed to the request(s) it belongs to
            if len(group) == 1:
                group[0].loop.call_soon_threadsafe(_settle, group[0].future, None, error)
            else:
                for pending in group:
                    self._score([pending])
            return
        for pending, output in zip(group, outputs):
            pending.loop.call_soon_threadsafe(_settle, pending.future, output, None)
