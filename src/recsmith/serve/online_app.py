"""The service for a sequence run scoring from the online store (`recsmith serve --model RUN
--store URI`): `POST /recommend` (next-item models), `POST /predict` with a user and candidate
items (DIN, LightGBM, the hybrid), `POST /events` (a user's new interaction, visible to the
next request), `GET /health`, `GET /metadata`.

The ranking service's guards apply (recsmith.serve.guards: loopback Host names, the body
limit, the status count), scoring needs `--token` when one is set, and `/events` changes what
is served, so it has its own token (`--events-token`) and is off without one. Model calls are
serialised; at most `max_pending` requests are admitted, the next is answered 503.

With `--log-dir`, every answered item is logged before the answer (recsmith.serve.request_log,
the ranking service's log): the log's own columns (request and impression ids, time, model),
`user`, `at` (the request time), `item`, `history` (the item codes of the history the model
read), the model's inputs for LightGBM and the hybrid (the feature matrix's columns: what
a retrain reads), and `score`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Optional

import numpy as np
import pyarrow as pa
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from recsmith.errors import RecsmithError
from recsmith.online.events import Event, apply_event
from recsmith.online.features import request_time_now
from recsmith.online.scoring import Answer, SequenceService
from recsmith.serve.app import ServeSettings, guarded_app, scoring_token
from recsmith.serve.guards import bearer_matches
from recsmith.serve.request_log import RequestLog, check_loggable, log_columns


SEQUENCE_LOG_COLUMNS = ("user", "at", "item", "history", "score")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: Optional[str] = Field(None, min_length=1, max_length=128)
    user: str | int
    k: int = Field(10, ge=1, le=1000)
    exclude_seen: bool = False
    at: Optional[int] = Field(None, ge=0, description="request time, seconds (default: now, this second's events included)")


class CandidatesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: Optional[str] = Field(None, min_length=1, max_length=128)
    user: str | int
    candidates: list[str | int] = Field(min_length=1, description="raw item ids")
    at: Optional[int] = Field(None, ge=0, description="request time, seconds (default: now, this second's events included)")
    explain: bool = Field(False, description="each candidate's top SHAP reasons (lightgbm and hybrid runs)")
    reasons: int = Field(3, ge=1, le=500, description="reasons per candidate when explain is true")


def answer_rows(answer: Answer, user, at: int, request_id: str, model: str, served_at: float) -> pa.Table:
    """One answer's log rows (the module docstring)."""
    n = len(answer.items)
    columns = log_columns(n, request_id, model, served_at)
    columns.update({"user": pa.array([str(user)] * n, pa.string()), "at": pa.array(np.full(n, at, np.int64)),
                    "item": pa.array([str(i) for i in answer.items], pa.string()),
                    "history": pa.array([answer.history.tolist()] * n, pa.list_(pa.int64()))})
    columns.update({name: pa.array(np.asarray(values, np.float64)) for name, values in answer.inputs.items()})
    columns["score"] = pa.array(np.asarray(answer.scores, np.float64))
    return pa.table(columns)


def build_online_app(service: SequenceService, settings: ServeSettings, events_token: Optional[str] = None) -> FastAPI:
    inference, admission = threading.Lock(), threading.BoundedSemaphore(settings.max_pending)
    if settings.log_dir:
        check_loggable(service.input_names, SEQUENCE_LOG_COLUMNS)
    request_log = RequestLog(settings.log_dir, settings.log_fsync_seconds) if settings.log_dir else None
    counters = {"requests": 0, "events": 0, "duplicate_events": 0, "rejected_overload": 0, "client_errors": 0,
                "server_errors": 0}
    counting = threading.Lock()

    def count(key: str) -> None:
        with counting:
            counters[key] += 1

    def count_status(status: int) -> None:
        if 400 <= status < 500:
            count("client_errors")
        elif status >= 500 and status != 503:
            count("server_errors")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if request_log is not None:
            request_log.close()

    app = guarded_app("recsmith sequence service", settings, count_status, lifespan)
    app.state.request_log = request_log
    authorised = scoring_token(settings)

    def events_allowed(request: Request) -> None:
        if not events_token:
            raise HTTPException(403, "POST /events is off: start the service with --events-token "
                                     "(or RECSMITH_EVENTS_TOKEN) to accept events")
        if not bearer_matches(request.headers.get("authorization"), events_token):
            raise HTTPException(401, "missing or wrong events token (Authorization: Bearer <events token>)")

    def scored(call):
        """One model call: admitted or 503, serialised, a RecsmithError is the client's (422)."""
        if not admission.acquire(blocking=False):
            count("rejected_overload")
            raise HTTPException(503, f"overloaded: {settings.max_pending} requests already admitted; retry later")
        try:
            with inference:
                return call()
        except RecsmithError as exc:
            raise HTTPException(422, str(exc)) from None
        finally:
            admission.release()

    def logged(answer: Answer, body, at: int) -> str:
        """Count the answer and log its rows (before it leaves); its request id."""
        request_id = body.request_id or uuid.uuid4().hex
        if request_log is not None:
            request_log.append(answer_rows(answer, body.user, at, request_id, service.run_dir, time.time()))
        count("requests")
        return request_id

    def describe() -> dict:
        manifest = service.store.manifest() or {}
        return {"model": service.run_dir, "architecture": service.architecture, "answers": f"POST /{service.mode}",
                "store": {"version": manifest.get("version"), "written_at": manifest.get("written_at")}}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **describe(), **counters,
                "request_log": request_log.stats() if request_log is not None else None}

    @app.get("/metadata", dependencies=[Depends(authorised)])
    def metadata() -> dict:
        return {**describe(), "max_batch": settings.max_batch, "items": service.num_items,
                "events": "on" if events_token else "off"}

    @app.post("/recommend", dependencies=[Depends(authorised)])
    def recommend(body: RecommendRequest) -> dict:
        at = body.at if body.at is not None else request_time_now()
        answer = scored(lambda: service.recommend(body.user, at, body.k, body.exclude_seen))
        request_id = logged(answer, body, at)
        return {"model": service.run_dir, "request_id": request_id, "user": body.user, "at": at,
                "items": answer.items, "scores": answer.scores.tolist()}

    @app.post("/predict", dependencies=[Depends(authorised)])
    def predict(body: CandidatesRequest) -> dict:
        if len(body.candidates) > settings.max_batch:
            raise HTTPException(413, f"{len(body.candidates)} candidates in one request; at most {settings.max_batch}")
        at = body.at if body.at is not None else request_time_now()
        extra = {}
        if body.explain:
            answer, bias, reasons = scored(lambda: service.explain(body.user, at, body.candidates, body.reasons))
            extra = {"bias": bias, "reasons": reasons}
        else:
            answer = scored(lambda: service.predict(body.user, at, body.candidates))
        request_id = logged(answer, body, at)
        return {"model": service.run_dir, "request_id": request_id, "user": body.user, "at": at,
                "candidates": body.candidates, **extra, "scores": answer.scores.tolist()}

    @app.post("/events", dependencies=[Depends(events_allowed)])
    def events(body: Event) -> dict:
        applied = scored(lambda: apply_event(service.store, body, int(service.item_codes([body.item])[0])))
        count("events" if applied else "duplicate_events")
        return {"id": body.id, "applied": applied}

    return app
