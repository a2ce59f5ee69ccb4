"""The scoring service (FastAPI): `POST /predict`, `GET /health`, `GET /metadata`, and the
admin endpoints for hot swap and gray release.

Requests carry raw feature rows exactly as a log would; the service encodes them with the
model's own fitted encoders (the training code path), scores them on the model the live
deployment picks, logs them for replay, and answers per-output probabilities. Inference is
serialised (one model call at a time, using the configured torch threads); at most
`max_pending` requests wait for it, and the next one is answered 503 at once rather than
queued without bound.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from recsmith.errors import RecsmithError
from recsmith.serve.request_log import RequestLog
from recsmith.serve.routing import Deployment, LoadedModel, ModelSlot
from recsmith.serve.sources import ModelSource

log = logging.getLogger("recsmith.serve")


@dataclass
class ServeSettings:
    max_batch: int = 1000  # rows per request; more is a 413
    max_pending: int = 32  # requests admitted at once (running + waiting); more is a 503
    token: Optional[str] = None  # bearer token required on everything but /health
    log_dir: Optional[Path] = None  # request/feature log (Parquet) for replay; None = off
    watch_seconds: float = 0.0  # poll the registry for a new version of the primary ref


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(min_length=1, description="raw feature rows, one per candidate")
    request_id: Optional[str] = None
    routing_key: Optional[str] = Field(None, description="sticky gray-release key (e.g. a user id)")


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None  # None removes the canary
    share: float = Field(0.0, ge=0.0, le=1.0)


def build_app(deployment: Deployment, source: ModelSource, settings: ServeSettings,
              primary_ref: Optional[str] = None) -> FastAPI:
    """The service around a first deployment; `source` loads other models for swaps and
    follows `primary_ref` in the registry when `settings.watch_seconds` is set."""
    slot = ModelSlot(deployment)
    inference = threading.Lock()
    admission = threading.BoundedSemaphore(settings.max_pending)
    request_log = RequestLog(settings.log_dir) if settings.log_dir else None
    stop_watch = threading.Event()
    counters = {"requests": 0, "rows": 0, "rejected_overload": 0, "errors": 0, "swaps": 0}
    counting = threading.Lock()  # requests run on a thread pool: += on a dict item is not atomic

    def count(key: str, amount: int = 1) -> None:
        with counting:
            counters[key] += amount
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.watch_seconds > 0 and primary_ref:
            threading.Thread(target=watch, name="registry-watch", daemon=True).start()
        yield
        stop_watch.set()
        if request_log is not None:
            request_log.close()

    app = FastAPI(title="recsmith scoring service", lifespan=lifespan)
    app.state.slot, app.state.request_log = slot, request_log

    def authorised(request: Request) -> None:
        if settings.token and request.headers.get("authorization") != f"Bearer {settings.token}":
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):  # one readable line per problem
        problems = ["{}: {}".format(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": "; ".join(problems)})

    @app.get("/health")
    def health() -> dict:
        current = slot.current
        return {"status": "ok", "model": current.primary.label,
                "canary": current.canary.label if current.canary else None, **counters}

    @app.get("/metadata", dependencies=[Depends(authorised)])
    def metadata() -> dict:
        current = slot.current
        return {"model": current.primary.label, "canary": current.canary.label if current.canary else None,
                "canary_share": current.canary_share, "max_batch": settings.max_batch,
                **current.primary.scorer.describe()}

    @app.post("/predict", dependencies=[Depends(authorised)])
    def predict(body: PredictRequest) -> dict:
        if len(body.rows) > settings.max_batch:
            raise HTTPException(413, f"{len(body.rows)} rows in one request; at most {settings.max_batch}")
        if not admission.acquire(blocking=False):
            count("rejected_overload")
            raise HTTPException(503, f"overloaded: {settings.max_pending} requests already admitted; retry later")
        try:
            chosen = slot.current.choose(body.routing_key or body.request_id)
            table = rows_to_table(body.rows, chosen.scorer.pipeline.features.columns)
            with inference:
                probs = chosen.scorer.predict_table(table)
        except RecsmithError as exc:
            count("errors")
            raise HTTPException(422, str(exc)) from None
        finally:
            admission.release()
        request_id = body.request_id or uuid.uuid4().hex
        count("requests")
        count("rows", len(body.rows))
        if request_log is not None:
            request_log.append(logged_rows(table, probs, request_id, chosen.label))
        return {"model": chosen.label, "request_id": request_id,
                "predictions": {name: values.tolist() for name, values in probs.items()}}

    @app.post("/admin/swap", dependencies=[Depends(authorised)])
    def swap(body: SwapRequest) -> dict:
        new = _load(body.model)  # loaded before the swap: requests keep flowing meanwhile
        old = slot.current.primary.label
        slot.swap(primary=new)
        count("swaps")
        log.info("hot swap: %s -> %s", old, new.label)
        return {"previous": old, "model": new.label}

    @app.post("/admin/canary", dependencies=[Depends(authorised)])
    def canary(body: CanaryRequest) -> dict:
        if body.model is None:
            current = slot.swap(drop_canary=True)
        else:
            current = slot.swap(canary=_load(body.model), canary_share=body.share)
        return {"model": current.primary.label, "canary": current.canary.label if current.canary else None,
                "canary_share": current.canary_share}

    def _load(ref: str) -> LoadedModel:
        try:
            return source.load(ref)
        except RecsmithError as exc:
            raise HTTPException(404, str(exc)) from None

    def watch() -> None:  # follow the registry: a new version of the primary ref is swapped in
        while not stop_watch.wait(settings.watch_seconds):
            try:
                if source.label(primary_ref) == slot.current.primary.label:
                    continue
                new = source.load(primary_ref)
            except RecsmithError as exc:
                log.warning("registry watch: %s", exc)
                continue
            old = slot.current.primary.label
            if new.label != old:
                slot.swap(primary=new)
                count("swaps")
                log.info("hot swap (registry): %s -> %s", old, new.label)

    return app


def rows_to_table(rows: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    """Raw rows → a table of the columns the encoders read; a missing field or a column of
    mixed types is a RecsmithError naming the row or the column."""
    arrays = {}
    for column in columns:
        values = []
        for index, row in enumerate(rows):
            if column not in row:
                raise RecsmithError(f"row {index} lacks the field '{column}' (send null for a missing value)")
            values.append(row[column])
        try:
            arrays[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise RecsmithError(f"field '{column}': values of mixed or unsupported types ({exc})") from None
    return pa.table(arrays)


def logged_rows(table: pa.Table, probs: dict[str, np.ndarray], request_id: str, model: str) -> pa.Table:
    n = table.num_rows
    extra = {"request_id": pa.array([request_id] * n), "model": pa.array([model] * n),
             "served_at": pa.array(np.full(n, time.time()))}
    extra.update({f"prob_{name}": pa.array(values) for name, values in probs.items()})
    for name, values in extra.items():
        table = table.append_column(name, values)
    return table
