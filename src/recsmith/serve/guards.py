"""What stands between the network and the routes: bearer tokens compared in constant time,
the Host header of a loopback service (DNS rebinding), the request body's size, and a count
of the answers by status.

The middlewares are plain ASGI, so they answer before FastAPI reads or parses anything.
"""

from __future__ import annotations

import hmac
import json
from typing import Callable, Optional

from fastapi import HTTPException

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def bearer_matches(authorization: Optional[str], token: str) -> bool:
    """Whether an Authorization header carries `token`; the comparison takes the same time
    whatever the header holds, so timing does not reveal how much of a guess was right."""
    given = (authorization or "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or trailing dot, lower case."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8000
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> Optional[str]:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class HostCheck:
    """403 for a request whose Host is not one of `allowed` names. A page on evil.example
    whose name an attacker re-points at 127.0.0.1 (DNS rebinding) reaches a loopback service
    from the victim's browser, but its requests still say Host: evil.example."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            name = host_name(_header(scope, b"host") or "")
            if name not in self.allowed:
                await _answer(send, 403, f"Host '{name}' is not served here (allowed: {', '.join(sorted(self.allowed))}"
                                         "; the operator can add names with --allowed-host)")
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over `limit` bytes: at once when Content-Length says so (nothing
    is read), or as soon as a streamed (chunked) body passes it. Either way the body is never
    buffered whole nor parsed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _detail(self, size: str) -> str:
        return f"request body of {size} bytes; at most {self.limit:,} (--max-body-bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")  # the HTTP parser has checked it is a number
        if declared is not None and int(declared) > self.limit:
            await _answer(send, 413, self._detail(f"{int(declared):,}"))
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # raised inside the route's body read: FastAPI answers it as a 413
                    raise HTTPException(413, self._detail(f"more than {self.limit:,}"))
            return message

        await self.app(scope, counted_receive, send)


class StatusCounter:
    """Calls `count(status)` for every answer that passes through it (outermost, so the
    Host and body checks' answers are counted too)."""

    def __init__(self, app, count: Callable[[int], None]):
        self.app, self.count = app, count

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.count(message["status"])
            await send(message)

        await self.app(scope, receive, counted_send)
