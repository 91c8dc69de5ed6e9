"""The server's lifecycle: starting -> ready -> draining (SIGTERM) or dead (the engine died).

Invariants:
- only ``ready`` admits new generation requests; ``draining`` and ``dead`` refuse them with a 503
  (``shutting_down`` / ``engine_dead``), and ``/health`` answers 503 in every phase but ``ready``;
- a drain ends (the HTTP server is told to stop, exit 0) when no request is in flight or when
  ``shutdown_grace_s`` has passed; an engine death ends the process with exit code 1
  ``engine_death_exit_s`` after it was noticed (time for in-flight requests to get their errors
  and for new ones to get a 503 rather than a refused connection), unless ``exit_on_engine_death``
  is off;
- :meth:`Lifecycle.begin_drain` only sets attributes, so a signal handler may call it; every
  decision is taken by :meth:`Lifecycle.tick`, which the event loop runs (:meth:`Lifecycle.watch`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from server.errors import APIError, server_error
from server.formatting import sse
from server.settings import Settings

log = logging.getLogger(__name__)
Phase = Literal["starting", "ready", "draining", "dead"]
REFUSALS = ("queue_full", "key_concurrency", "draining", "engine_dead")


def is_engine_dead(exc: BaseException) -> bool:
    """``exc`` is vLLM's ``EngineDeadError`` (never imports vLLM: no vLLM, no such error)."""
    mod = sys.modules.get("vllm.v1.engine.exceptions")
    return mod is not None and isinstance(exc, mod.EngineDeadError)


class LifecycleMetrics:
    """Engine death, draining, queue and admission refusals, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "truthsteer_"
        self.engine_dead = Gauge(p + "engine_dead", "1 once the engine died (the process then exits)",
                                 registry=registry)
        self.engine_dead_errors = Counter(p + "engine_dead_errors", "Requests failed or refused because the "
                                          "engine died", registry=registry)
        self.draining = Gauge(p + "draining", "1 while shutting down (SIGTERM received)", registry=registry)
        self.queued = Gauge(p + "queued_requests", "Generation requests admitted, not yet started in the engine",
                            registry=registry)
        self.refused = Counter(p + "admission_refused", "Generation requests refused at entry, by reason",
                               ["reason"], registry=registry)
        for reason in REFUSALS:
            self.refused.labels(reason)


class Lifecycle:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.phase: Phase = "starting"
        self.in_flight = 0  # generation requests between admission and their last byte
        self.exit_code = 0
        self.metrics: LifecycleMetrics | None = None
        self._since = 0.0  # start of the drain or of the engine's death
        self._stop: Callable[[], None] | None = None
        self._stopped = False

    def bind_stop(self, stop: Callable[[], None]) -> None:
        """``stop()`` asks the HTTP server to shut down (uvicorn: ``should_exit``)."""
        self._stop = stop

    def ready(self, registry: CollectorRegistry) -> None:
        self.metrics = LifecycleMetrics(registry)
        if self.phase == "starting":
            self.phase = "ready"

    def begin_drain(self) -> None:
        """SIGTERM: refuse new work, let the in-flight requests finish (signal-safe)."""
        if self.phase in ("starting", "ready"):
            self._since = self.clock()
            self.phase = "draining"
            if self.metrics is not None:
                self.metrics.draining.set(1)

    def engine_died(self, reason: str = "") -> None:
        if self.phase == "dead":
            return
        log.error("truthsteer: the engine died%s; %s", f" ({reason})" if reason else "",
                  "exiting" if self.settings.exit_on_engine_death else "staying up (exit_on_engine_death off)")
        self.phase, self._since, self.exit_code = "dead", self.clock(), 1
        if self.metrics is not None:
            self.metrics.engine_dead.set(1)

    def count_dead_error(self) -> None:
        if self.metrics is not None:
            self.metrics.engine_dead_errors.inc()

    def refusal(self) -> APIError | None:
        """Why a new request is refused now, or ``None``."""
        if self.phase == "dead":
            return APIError(503, "the inference engine died; the server is restarting", type="service_unavailable",
                            code="engine_dead")
        if self.phase == "draining":
            return APIError(503, "the server is shutting down; retry on another replica", type="service_unavailable",
                            code="shutting_down")
        return None

    def tick(self, engine: Any) -> None:
        """Notice a dead engine; stop the HTTP server when a drain or a death is over."""
        if self.phase != "dead" and bool(getattr(engine, "errored", False)):
            self.engine_died("engine reports errored")
        if self._stopped or self._stop is None:
            return
        waited = self.clock() - self._since
        done = (self.phase == "draining" and (self.in_flight == 0 or waited >= self.settings.shutdown_grace_s)) or (
            self.phase == "dead" and self.settings.exit_on_engine_death and waited >= self.settings.engine_death_exit_s)
        if done:
            if self.in_flight:
                log.warning("truthsteer: stopping with %d request(s) still in flight", self.in_flight)
            self._stopped = True
            self._stop()

    async def watch(self, engine: Any, period_s: float = 0.2) -> None:
        while True:
            self.tick(engine)
            await asyncio.sleep(period_s)


async def guard_stream(chunks: AsyncIterator[str], lifecycle: Lifecycle) -> AsyncIterator[str]:
    """SSE lines of ``chunks``; a failure mid-stream ends it with an OpenAI-shaped error event
    (``data: {"error": {...}}``) instead of a cut connection."""
    try:
        async for line in chunks:
            yield line
    except APIError as e:  # the engine died (admission.TrackedEngine), or another refusal
        yield sse(e.body())
    except Exception as e:  # every failure becomes the stream's last event
        dead = is_engine_dead(e)
        if dead:
            lifecycle.engine_died(str(e))
            lifecycle.count_dead_error()
        else:
            log.exception("truthsteer: stream failed")
        yield sse(server_error(e, dead).body())


def graceful_server(config: Any, lifecycle: Lifecycle) -> Any:
    """A uvicorn server whose first SIGTERM/SIGINT drains (see :class:`Lifecycle`) instead of
    closing the listener at once; a second one stops it right away."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if lifecycle.phase in ("starting", "ready"):
                lifecycle.begin_drain()
                return
            if sig == signal.SIGINT:
                super().handle_exit(sig, frame)
                return
            self.should_exit = True

    server = _Server(config)
    lifecycle.bind_stop(lambda: setattr(server, "should_exit", True))
    return server
