"""Running the scoring service with uvicorn: in the foreground (`recsmith serve`) or on a
background thread (tests, benchmarks)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

import torch
import uvicorn

from recsmith.errors import ConfigError
from recsmith.serve.app import ServeSettings, build_app
from recsmith.serve.guards import LOOPBACK_NAMES
from recsmith.serve.routing import MAX_CANARY_SHARE, Deployment
from recsmith.serve.sources import ModelSource

log = logging.getLogger("recsmith.serve")
ANY_HOST = "*"


def allowed_hosts(bind: str, names: list[str]) -> Optional[frozenset[str]]:
    """The Host names a service bound to `bind` answers: the loopback names (plus `names`) on
    loopback, `names` elsewhere, any with '*' or with neither (nothing to check against)."""
    if ANY_HOST in names:
        return None
    names = {name.strip().lower().strip("[]") for name in names}
    if bind in LOOPBACK_NAMES:
        return frozenset(LOOPBACK_NAMES | names)
    return frozenset(names) or None


def check_settings(settings: ServeSettings) -> None:
    if settings.token is not None and settings.admin_token is not None and settings.token == settings.admin_token:
        raise ConfigError("--admin-token must differ from --token: whoever may score must not also swap models")
    if settings.allow_local_models and not settings.admin_token:
        raise ConfigError("--allow-local-models opens the admin API to model dirs, but the admin API is off "
                          "without --admin-token")
    if settings.max_body_bytes is not None and settings.max_body_bytes < 1:
        raise ConfigError(f"--max-body-bytes: {settings.max_body_bytes} is not a positive number of bytes")
    if not settings.log_fsync_seconds >= 0:
        raise ConfigError(f"--log-fsync-seconds: {settings.log_fsync_seconds} is not ≥ 0")


def make_app(model: str, settings: ServeSettings, registry: Optional[str] = None, canary: Optional[str] = None,
             canary_share: float = 0.0, threads: Optional[int] = None, backend: str = "torch"):
    """Load the first deployment (bad settings and references fail here, before anything listens)."""
    check_settings(settings)
    if canary and not 0.0 < canary_share <= MAX_CANARY_SHARE:
        raise ConfigError(f"--canary-share: {canary_share} is not a share in (0, {MAX_CANARY_SHARE}] (a canary "
                          "is the minority; to send it every request, swap it in)")
    if threads:
        torch.set_num_threads(threads)
    source = ModelSource(registry, backend=backend)
    deployment = Deployment(source.load(model), source.load(canary) if canary else None,
                            canary_share if canary else 0.0)
    return build_app(deployment, source, settings, primary_ref=model)


def make_online_app(model: str, store: str, settings: ServeSettings, events_token: Optional[str] = None,
                    threads: Optional[int] = None):
    """A sequence run scoring from an online store (recsmith.serve.online_app)."""
    from recsmith.online.scoring import SequenceService
    from recsmith.online.store import open_store
    from recsmith.serve.online_app import build_online_app

    check_settings(settings)
    for name, value in (("--token", settings.token), ("--admin-token", settings.admin_token)):
        if events_token is not None and value is not None and events_token == value:
            raise ConfigError(f"--events-token must differ from {name}: whoever may score must not also change "
                              "the features served")
    if threads:
        torch.set_num_threads(threads)
    return build_online_app(SequenceService(model, open_store(store)), settings, events_token)


def run_service(app, host: str, port: int, settings: ServeSettings) -> None:
    if host not in LOOPBACK_NAMES and not settings.token:
        log.warning("serving on %s without a bearer token: anyone who can reach it can score", host)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@dataclass
class BackgroundServer:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_background(app, host: str = "127.0.0.1", port: Optional[int] = None, timeout: float = 30.0) -> BackgroundServer:
    """Serve `app` on a thread; returns once it accepts connections."""
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start on {host}:{port}")
        time.sleep(0.02)
    return BackgroundServer(server, thread, f"http://{host}:{port}")
