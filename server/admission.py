"""Admission control at the point of entry of the generation endpoints (before the body is read).

A request is *queued* from admission until the engine returned its first output (any of its
engine requests), then *running* until its last byte is sent. Invariants:
- a new request is refused, in this order, when the lifecycle refuses work (503), when its API
  key already has ``max_concurrent_per_key`` requests in flight (429 ``concurrency_limit_exceeded``)
  or when ``max_queued_requests`` requests are queued (429 ``rate_limit_exceeded``); 429s carry
  ``Retry-After`` and OpenAI's error shape (``type: "rate_limit_exceeded"``);
- every admitted request is released exactly once, whatever way it ends (the counters are
  plain integers on the event loop's thread);
- the engine marks a request started through :class:`TrackedEngine`, which finds the request's
  :class:`Ticket` in a context variable set here (asyncio tasks copy it, so the engine requests
  of ``n > 1`` and of several prompts see the same ticket).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Collection
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError, server_error
from server.lifecycle import Lifecycle, is_engine_dead
from server.settings import Settings


@dataclass
class Ticket:
    key: str | None
    queued: bool = True


TICKET: ContextVar[Ticket | None] = ContextVar("truthsteer_ticket", default=None)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return hashlib.sha256(token.strip().encode()).hexdigest()[:16]  # never keep the key itself
    return None


class Admission:
    """The counters and the decision; :class:`AdmissionMiddleware` applies it to HTTP requests."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.queued = 0
        self.per_key: dict[str, int] = {}

    def _refuse(self, reason: str, err: APIError) -> APIError:
        if self.lifecycle.metrics is not None:
            self.lifecycle.metrics.refused.labels(reason).inc()
        return err

    def admit(self, key: str | None) -> Ticket | APIError:
        refusal = self.lifecycle.refusal()
        if refusal is not None:
            if refusal.code == "engine_dead":
                self.lifecycle.count_dead_error()
            return self._refuse("engine_dead" if refusal.code == "engine_dead" else "draining", refusal)
        s = self.settings
        if key is not None and s.max_concurrent_per_key is not None and \
                self.per_key.get(key, 0) >= s.max_concurrent_per_key:
            return self._refuse("key_concurrency", APIError(
                429, f"this API key already has {s.max_concurrent_per_key} requests in flight (max_concurrent_per_key)",
                type="rate_limit_exceeded", code="concurrency_limit_exceeded"))
        if s.max_queued_requests is not None and self.queued >= s.max_queued_requests:
            return self._refuse("queue_full", APIError(
                429, f"the server has {self.queued} requests waiting for the engine (max_queued_requests); retry later",
                type="rate_limit_exceeded", code="rate_limit_exceeded"))
        ticket = Ticket(key)
        self.queued += 1
        self.lifecycle.in_flight += 1
        if key is not None:
            self.per_key[key] = self.per_key.get(key, 0) + 1
        self._gauge()
        return ticket

    def started(self, ticket: Ticket) -> None:
        if ticket.queued:
            ticket.queued = False
            self.queued -= 1
            self._gauge()

    def release(self, ticket: Ticket) -> None:
        self.started(ticket)
        self.lifecycle.in_flight -= 1
        if ticket.key is not None:
            left = self.per_key[ticket.key] - 1
            if left:
                self.per_key[ticket.key] = left
            else:
                del self.per_key[ticket.key]

    def _gauge(self) -> None:
        if self.lifecycle.metrics is not None:
            self.lifecycle.metrics.queued.set(self.queued)


class AdmissionMiddleware:
    """Pure ASGI: admits or refuses POSTs to ``paths``; an admitted request holds its ticket until
    its response (a stream included) has been sent or abandoned."""

    def __init__(self, app: ASGIApp, admission: Admission, paths: Collection[str]) -> None:
        self.app = app
        self.admission = admission
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        got = self.admission.admit(_bearer(scope))
        if isinstance(got, APIError):
            headers = {"Retry-After": str(self.admission.settings.retry_after_s)} if got.status == 429 else None
            await got.response(headers)(scope, receive, send)
            return
        token = TICKET.set(got)
        try:
            await self.app(scope, receive, send)
        finally:
            TICKET.reset(token)
            self.admission.release(got)


class TrackedEngine:
    """The engine as ``Serving`` sees it: ``generate`` marks the request's ticket started at its
    first output, reports an engine death to the lifecycle and turns it into a 503 ``APIError``
    (``engine_dead``); ``abort`` on a dead engine is a no-op; everything else is the engine's."""

    def __init__(self, engine: Any, admission: Admission) -> None:
        self._engine = engine
        self._admission = admission

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        ticket = TICKET.get()
        try:
            async for out in self._engine.generate(*args, **kwargs):
                if ticket is not None:
                    self._admission.started(ticket)
                yield out
        except Exception as e:
            if not is_engine_dead(e):
                raise
            lifecycle = self._admission.lifecycle
            lifecycle.engine_died(str(e))
            lifecycle.count_dead_error()
            raise server_error(e, True) from e  # an APIError: errors.py answers it without a trace

    async def abort(self, request_id: str) -> None:
        try:
            await self._engine.abort(request_id)
        except Exception as e:
            if not is_engine_dead(e):
                raise  # a dead engine holds no request to abort
