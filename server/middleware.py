"""Pure ASGI middleware: the request-size limit and the request metrics.

Starlette's ``@app.middleware("http")`` (``BaseHTTPMiddleware``) runs the endpoint in a task and
relays every body chunk through a memory stream; for a token stream that is a hop per token on
the API's event loop. These wrap ``receive`` / ``send`` directly instead, as vLLM's own server
does, so a streamed token costs one ``send`` more than the route's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError

if TYPE_CHECKING:
    from server.metrics import Metrics


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


class BodyLimit:
    """413 in OpenAI's error shape when the declared body is larger than ``max_bytes``, before the
    body is read; a body without a declared length (chunked) is read up to ``max_bytes`` first."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(413, f"request body exceeds {self.max_bytes} bytes", code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await self._error().response()(scope, receive, send)
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        # no declared length (chunked): read the body here, at most ``max_bytes`` of it, and replay it
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._error().response()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that returns ``messages`` first, then defers to ``then`` (disconnects)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


class RequestMetrics:
    """Requests in flight, requests by status and end-to-end latency (to the last body byte, so a
    stream counts until its ``[DONE]``) for the endpoints in ``endpoints`` (path -> label).
    ``metrics()`` is ``None`` until the engine has started; requests before that are not counted."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, str], metrics: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.endpoints = endpoints
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope.get("path", "")) if scope["type"] == "http" else None
        m = self.metrics() if endpoint is not None else None
        if m is None or endpoint is None:
            await self.app(scope, receive, send)
            return
        status = "500"

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        start = time.monotonic()
        m.in_flight.labels(endpoint).inc()
        try:
            await self.app(scope, receive, observed)
        finally:
            m.in_flight.labels(endpoint).dec()
            m.requests.labels(endpoint, status).inc()
            m.latency.labels(endpoint).observe(time.monotonic() - start)
