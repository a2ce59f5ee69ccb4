"""The scoring service (FastAPI): `POST /predict`, `GET /health`, `GET /metadata`, and the
admin endpoints for hot swap and gray release.

Requests carry raw feature rows exactly as a log would; the service casts them to the
model's raw schema, encodes them with the model's own fitted encoders (the training code
path), scores them on the model the live deployment picks, logs them (before answering) and
answers per-output probabilities. Inference runs on one thread (the configured torch
threads) that scores concurrent requests in one model call (serve/batching.py: micro-batches,
waiting at most `batch_wait_ms` for more); at most `max_pending` requests are admitted, and
the next one is answered 503 at once rather than queued without bound.

Security (docs/serving.md, "Security"): scoring and admin have separate bearer tokens, and
the admin API is off without one; admin requests name registry references only (unless
local models are allowed) and their errors name no path and list no model; a body over the
byte limit is refused before it is read; a loopback service answers loopback Host names only.
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

import pyarrow as pa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsmith.errors import RecsmithError
from recsmith.serve.batching import MicroBatcher
from recsmith.serve.guards import LOOPBACK_NAMES, BodyLimit, HostCheck, StatusCounter, bearer_matches
from recsmith.serve.model_registry import BadModelName, ReferenceRefused
from recsmith.serve.page import PAGE, PAGE_COLUMNS
from recsmith.serve.request_log import RequestLog, check_loggable, logged_rows
from recsmith.serve.request_rows import columns_to_table, rows_to_table
from recsmith.serve.routing import MAX_CANARY_SHARE, Deployment, LoadedModel, ModelSlot
from recsmith.serve.sources import LocalModelsRefused, ModelSource

log = logging.getLogger("recsmith.serve")

# JSON bytes a request row may take on average: the synthetic funnel's 29 raw fields take
# about 600; what a row limit allows, a body limit should not refuse
BODY_BYTES_PER_ROW = 4096
BODY_BYTES_SLACK = 64 * 1024  # the envelope: request id, routing key, whitespace


@dataclass
class ServeSettings:
    max_batch: int = 1000  # rows per request; more is a 413
    max_body_bytes: Optional[int] = None  # request body; more is a 413 before parsing (None: from max_batch)
    max_pending: int = 32  # requests admitted at once (running + waiting); more is a 503
    token: Optional[str] = None  # bearer token for /predict and /metadata
    admin_token: Optional[str] = None  # bearer token for /admin/*; None turns the admin API off
    allow_local_models: bool = False  # admin requests may name run / bundle dirs, not only registry refs
    allowed_hosts: Optional[frozenset[str]] = LOOPBACK_NAMES  # Host names answered; None: any
    log_dir: Optional[Path] = None  # request/feature log (Parquet) for replay and joins; None = off
    log_fsync_seconds: float = 1.0  # the log is fsync'ed this often (0: before every answer)
    watch_seconds: float = 0.0  # poll the registry for a new version of the primary ref
    batch_wait_ms: float = 0.0  # micro-batching: how long a batch waits for more requests (serve/batching.py)
    batch_max_rows: int = 4096  # ... and the rows at which it stops waiting

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or self.max_batch * BODY_BYTES_PER_ROW + BODY_BYTES_SLACK


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Optional[list[dict[str, Any]]] = Field(None, min_length=1, description="raw feature rows, one per candidate")
    columns: Optional[dict[str, list[Any]]] = Field(
        None, min_length=1, description="or the same as columns: {field: [one value per candidate]}")
    request_id: Optional[str] = Field(None, min_length=1, max_length=128)
    routing_key: Optional[str] = Field(None, max_length=256, description="sticky gray-release key (e.g. a user id)")

    @model_validator(mode="after")
    def _rows_or_columns(self):
        if (self.rows is None) == (self.columns is None):
            raise ValueError("send the candidates as 'rows' (a list of objects) or as 'columns' (an object of lists), "
                             "one of the two")
        if self.columns is not None and not any(self.columns.values()):
            raise ValueError("columns: no values")
        return self

    @property
    def size(self) -> int:
        return len(self.rows) if self.rows is not None else max(len(v) for v in self.columns.values())

    def table(self, schema: pa.Schema) -> pa.Table:
        """The candidates cast to the model's raw schema (serve/request_rows.py)."""
        return rows_to_table(self.rows, schema) if self.rows is not None else columns_to_table(self.columns, schema)


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = Field(None, min_length=1, max_length=256)  # None removes the canary
    share: Optional[float] = Field(None, gt=0.0, le=MAX_CANARY_SHARE)

    @model_validator(mode="after")
    def _share_with_model(self):
        if self.model is not None and self.share is None:
            raise ValueError(f"a canary needs its share of traffic, in (0, {MAX_CANARY_SHARE}]")
        return self


def _problem(error: dict) -> str:
    """One request validation error in words; a body that is not a JSON object says so."""
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] in ("json_invalid", "model_attributes_type", "model_type") or \
            (tuple(error["loc"]) == ("body",) and error["type"] == "missing"):
        return 'body: expected a JSON object such as {"rows": [...]} sent as application/json'
    return f"{where}: {error['msg']}"


async def parsed(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request body as `model`, parsed and validated in one pass (pydantic-core reads the
    JSON bytes: a 100-row body in a fraction of json.loads + validation); a bad body is the
    same 422 FastAPI would answer."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _body_schema(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of an endpoint that parses `model` itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def guarded_app(title: str, settings: ServeSettings, count_status, lifespan=None) -> FastAPI:
    """A FastAPI app behind the service's guards (Host names, body limit, the status count)
    that answers an invalid request with one readable line per problem."""
    app = FastAPI(title=title, lifespan=lifespan)
    # added innermost first: the status count sees every answer, Host and body checks included
    app.add_middleware(BodyLimit, limit=settings.body_limit)
    if settings.allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(StatusCounter, count=count_status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = [_problem(e) for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": "; ".join(dict.fromkeys(problems))})

    return app


def scoring_token(settings: ServeSettings):
    """The dependency that checks `settings.token` (when set) on scoring endpoints (async: a
    check this small is not worth a hop to the thread pool)."""
    async def authorised(request: Request) -> None:
        if settings.token and not bearer_matches(request.headers.get("authorization"), settings.token):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    return authorised


def build_app(deployment: Deployment, source: ModelSource, settings: ServeSettings,
              primary_ref: Optional[str] = None) -> FastAPI:
    """The service around a first deployment; `source` loads other models for swaps and
    follows `primary_ref` in the registry when `settings.watch_seconds` is set."""
    slot = ModelSlot(deployment)
    batcher = MicroBatcher(settings.batch_wait_ms / 1000, settings.batch_max_rows)
    admission = threading.BoundedSemaphore(settings.max_pending)
    if settings.log_dir:
        for model in (deployment.primary, deployment.canary):
            if model is not None:
                check_loggable(model.scorer.pipeline.raw_schema.names)
    request_log = RequestLog(settings.log_dir, settings.log_fsync_seconds) if settings.log_dir else None
    stop_watch = threading.Event()
    counters = {"requests": 0, "rows": 0, "rejected_overload": 0, "client_errors": 0, "server_errors": 0,
                "swaps": 0}
    counting = threading.Lock()  # requests run on a thread pool: += on a dict item is not atomic

    def count(key: str, amount: int = 1) -> None:
        with counting:
            counters[key] += amount

    def count_status(status: int) -> None:
        if 400 <= status < 500:
            count("client_errors")
        elif status >= 500 and status != 503:  # 503 is counted as rejected_overload
            count("server_errors")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.watch_seconds > 0 and primary_ref:
            threading.Thread(target=watch, name="registry-watch", daemon=True).start()
        yield
        stop_watch.set()
        batcher.close()
        if request_log is not None:
            request_log.close()

    app = guarded_app("recsmith scoring service", settings, count_status, lifespan)
    app.state.slot, app.state.request_log, app.state.batcher = slot, request_log, batcher
    authorised = scoring_token(settings)

    def admin(request: Request) -> None:
        if not settings.admin_token:
            raise HTTPException(403, "the admin API is off: start the service with --admin-token "
                                     "(or RECSMITH_ADMIN_TOKEN) to swap models or run a canary over HTTP")
        if not bearer_matches(request.headers.get("authorization"), settings.admin_token):
            raise HTTPException(401, "missing or wrong admin token (Authorization: Bearer <admin token>)")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # answered by Starlette's outermost middleware, past the status count; the server
        # logs the traceback once this returns
        count("server_errors")
        return JSONResponse(status_code=500, content={"detail": "internal error (logged by the service)"})

    def state(current: Deployment) -> dict:
        return {"model": current.primary.label, "canary": current.canary.label if current.canary else None,
                "canary_share": current.canary_share, "pinned": current.pinned,
                "following": primary_ref if settings.watch_seconds > 0 else None}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **state(slot.current), **counters, "model_calls": batcher.batches,
                "request_log": request_log.stats() if request_log is not None else None}

    @app.get("/ui", response_class=HTMLResponse)
    def page() -> str:
        """The page for people (recsmith.serve.page): for models that score texts."""
        if slot.current.primary.scorer.describe().get("columns") != PAGE_COLUMNS:
            raise HTTPException(404, "the page scores texts; this model takes feature rows: POST /predict")
        return PAGE

    @app.get("/metadata", dependencies=[Depends(authorised)])
    def metadata() -> dict:
        current = slot.current
        return {**state(current), "max_batch": settings.max_batch, "max_body_bytes": settings.body_limit,
                **current.primary.scorer.describe()}

    @app.post("/predict", dependencies=[Depends(authorised)], openapi_extra=_body_schema(PredictRequest))
    async def predict(request: Request) -> JSONResponse:
        body = await parsed(request, PredictRequest)
        if body.size > settings.max_batch:
            raise HTTPException(413, f"{body.size} rows in one request; at most {settings.max_batch}")
        if not admission.acquire(blocking=False):
            count("rejected_overload")
            raise HTTPException(503, f"overloaded: {settings.max_pending} requests already admitted; retry later")
        try:
            chosen = slot.current.choose(body.routing_key or body.request_id)
            table = body.table(chosen.scorer.pipeline.raw_schema)
            probs = await batcher.score(chosen.scorer, table)
        except RecsmithError as exc:
            raise HTTPException(422, str(exc)) from None
        finally:
            admission.release()
        request_id = body.request_id or uuid.uuid4().hex
        if request_log is not None:  # written before the answer (off the event loop: it may fsync)
            await run_in_threadpool(request_log.append, logged_rows(table, probs, request_id, chosen.label, time.time()))
        count("requests")
        count("rows", table.num_rows)
        return JSONResponse({"model": chosen.label, "request_id": request_id,
                             "predictions": {name: values.tolist() for name, values in probs.items()}})

    @app.post("/admin/swap", dependencies=[Depends(admin)])
    def swap(body: SwapRequest) -> dict:
        new = _load(body.model)  # loaded before the swap: requests keep flowing meanwhile
        old = slot.current.primary.label
        current = slot.swap(primary=new, pinned=True)
        count("swaps")
        log.info("hot swap (admin): %s -> %s, pinned until the registry promotes a new version", old, new.label)
        return {"previous": old, **state(current)}

    @app.post("/admin/canary", dependencies=[Depends(admin)])
    def canary(body: CanaryRequest) -> dict:
        if body.model is None:
            current = slot.swap(drop_canary=True)
        else:
            current = slot.swap(canary=_load(body.model), canary_share=body.share)
        log.info("canary (admin): %s at %.3f", current.canary.label if current.canary else None, current.canary_share)
        return state(current)

    def _load(ref: str) -> LoadedModel:
        """A model an admin request names. Its errors say what was wrong with the reference,
        never where the registry is or what else it holds; the service log has the details."""
        try:
            label, path = source.resolve(ref, local=settings.allow_local_models)
        except BadModelName as exc:
            raise HTTPException(422, str(exc)) from None
        except LocalModelsRefused as exc:
            raise HTTPException(403, str(exc)) from None
        except ReferenceRefused as exc:
            log.warning("admin: refused '%s': %s", ref, exc)
            raise HTTPException(403, f"model reference '{ref}' refused: only registry references whose bundles "
                                     "lie inside the registry are served") from None
        except RecsmithError as exc:
            log.warning("admin: '%s' not found: %s", ref, exc)
            raise HTTPException(404, f"unknown model reference '{ref}'") from None
        try:
            loaded = source.load_resolved(label, path)
            if request_log is not None:
                check_loggable(loaded.scorer.pipeline.raw_schema.names)
        except RecsmithError as exc:
            log.error("admin: '%s' could not be loaded: %s", ref, exc)
            raise HTTPException(500, f"model '{label}' could not be loaded (the service log says why)") from None
        return loaded

    def watch() -> None:
        """Follow the registry: when `primary_ref` resolves to another version (a promotion),
        swap it in. Only then: a manual swap pins its model until the next promotion."""
        followed = slot.current.primary.label
        while not stop_watch.wait(settings.watch_seconds):
            try:
                if source.label(primary_ref) == followed:
                    continue
                new = source.load(primary_ref)
            except RecsmithError as exc:
                log.warning("registry watch: %s", exc)
                continue
            followed, old = new.label, slot.current
            slot.swap(primary=new, pinned=False)
            if new.label != old.primary.label:
                count("swaps")
            log.info("hot swap (registry): %s -> %s%s", old.primary.label, new.label,
                     "; the manual pin is released" if old.pinned else "")

    return app
