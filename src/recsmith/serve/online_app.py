"""The service for a sequence run scoring from the online store (`recsmith serve --model RUN
--store URI`): `POST /recommend` (next-item models), `POST /predict` with a user and candidate
items (DIN, LightGBM, the hybrid), `POST /events` (a user's new interaction, visible to the
next request), `GET /health`, `GET /metadata`.

The ranking service's guards apply (recsmith.serve.guards: loopback Host names, the body
limit, the status count), scoring needs `--token` when one is set, and `/events` changes what
is served, so it has its own token (`--events-token`) and is off without one. Model calls are
serialised; at most `max_pending` requests are admitted, the next is answered 503.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from recsmith.errors import RecsmithError
from recsmith.online.events import Event, apply_event
from recsmith.online.scoring import SequenceService
from recsmith.serve.app import ServeSettings, guarded_app, scoring_token
from recsmith.serve.guards import bearer_matches


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | int
    k: int = Field(10, ge=1, le=1000)
    exclude_seen: bool = False
    at: Optional[int] = Field(None, ge=0, description="request time, seconds (default: now)")


class CandidatesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | int
    candidates: list[str | int] = Field(min_length=1, description="raw item ids")
    at: Optional[int] = Field(None, ge=0, description="request time, seconds (default: now)")
    explain: bool = Field(False, description="each candidate's top SHAP reasons (lightgbm and hybrid runs)")
    reasons: int = Field(3, ge=1, le=500, description="reasons per candidate when explain is true")


def build_online_app(service: SequenceService, settings: ServeSettings, events_token: Optional[str] = None) -> FastAPI:
    inference, admission = threading.Lock(), threading.BoundedSemaphore(settings.max_pending)
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

    app = guarded_app("recsmith sequence service", settings, count_status)
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

    def describe() -> dict:
        manifest = service.store.manifest() or {}
        return {"model": service.run_dir, "architecture": service.architecture, "answers": f"POST /{service.mode}",
                "store": {"version": manifest.get("version"), "written_at": manifest.get("written_at")}}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **describe(), **counters}

    @app.get("/metadata", dependencies=[Depends(authorised)])
    def metadata() -> dict:
        return {**describe(), "max_batch": settings.max_batch, "items": service.num_items,
                "events": "on" if events_token else "off"}

    @app.post("/recommend", dependencies=[Depends(authorised)])
    def recommend(body: RecommendRequest) -> dict:
        at = body.at if body.at is not None else int(time.time())
        items, scores = scored(lambda: service.recommend(body.user, at, body.k, body.exclude_seen))
        count("requests")
        return {"model": service.run_dir, "user": body.user, "at": at, "items": items, "scores": scores.tolist()}

    @app.post("/predict", dependencies=[Depends(authorised)])
    def predict(body: CandidatesRequest) -> dict:
        if len(body.candidates) > settings.max_batch:
            raise HTTPException(413, f"{len(body.candidates)} candidates in one request; at most {settings.max_batch}")
        at = body.at if body.at is not None else int(time.time())
        answer = {"model": service.run_dir, "user": body.user, "at": at, "candidates": body.candidates}
        if body.explain:
            scores, bias, reasons = scored(lambda: service.explain(body.user, at, body.candidates, body.reasons))
            answer.update(bias=bias, reasons=reasons)
        else:
            scores = scored(lambda: service.predict(body.user, at, body.candidates))
        count("requests")
        return {**answer, "scores": scores.tolist()}

    @app.post("/events", dependencies=[Depends(events_allowed)])
    def events(body: Event) -> dict:
        applied = scored(lambda: apply_event(service.store, body, int(service.item_codes([body.item])[0])))
        count("events" if applied else "duplicate_events")
        return {"id": body.id, "applied": applied}

    return app
