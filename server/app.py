"""``create_app(settings)``: the FastAPI application, thin routes over :class:`Serving`."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from server.activations import activations_router
from server.admission import Admission, AdmissionMiddleware, TrackedEngine
from server.completions import collect, stream
from server.directions_api import directions_router
from server.errors import APIError, install_error_handlers
from server.lifecycle import Lifecycle, guard_stream
from server.middleware import BodyLimit, RequestMetrics
from server.openapi import GENERATION, HEALTH, METADATA, install_openapi, streamed
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DirectionCard,
    DirectionList,
    ModelList,
    ProbeScoreList,
    ProbeScoreRequest,
)
from server.responses import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionResponse,
)
from server.scoring import score_texts
from server.serving import Serving
from server.settings import Settings
from steering.spec import wire

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/probes/score": "probes_score"}


def _auth(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    # with api_keys set, admin keys (server/directions_api.py) are API keys too
    pool = [*settings.api_keys, *settings.admin_api_keys] if settings.api_keys else []
    keys = [k.get_secret_value().encode() for k in pool]

    async def check(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip().encode(), k) for k in keys):
            raise APIError(401, "missing or invalid API key (Authorization: Bearer ...)", type="authentication_error",
                           code="invalid_api_key")

    return check


def create_app(settings: Settings, serving: Serving | None = None) -> FastAPI:
    """Build the app; the engine starts in the lifespan unless a ``serving`` is injected.
    ``app.state.lifecycle`` drains on SIGTERM and notices engine death (``server/lifecycle.py``)."""
    state: dict[str, Serving] = {}
    lifecycle = Lifecycle(settings)
    admission = Admission(settings, lifecycle)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        s = serving or Serving.start(settings)
        await s.connect_probes()
        if serving is None:
            from vllm.utils.gc_utils import freeze_gc_heap

            # as vLLM's own server does: the start-up heap (torch, transformers, vLLM; ~700k
            # objects) never becomes garbage; frozen, a full collection no longer walks it (310 ms
            # per collection unfrozen, measured, every stream stalled meanwhile; 0 ms frozen)
            freeze_gc_heap()
        s.engine = TrackedEngine(s.engine, admission)
        state["serving"] = s
        _app.state.metrics = s.metrics
        lifecycle.ready(s.metrics.registry)
        watcher = asyncio.ensure_future(lifecycle.watch(s.engine))
        try:
            yield
        finally:
            watcher.cancel()
            await s.close()

    app = FastAPI(title="truthsteer", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible server with per-request truth/sycophancy steering")
    app.state.lifecycle = lifecycle
    install_error_handlers(app)
    install_openapi(app, [CompletionChunk, ChatCompletionChunk])
    auth = Depends(_auth(settings))

    def srv() -> Serving:
        if "serving" not in state:
            raise APIError(503, "the engine is starting", type="service_unavailable", code="starting")
        return state["serving"]

    # pure ASGI (no per-chunk relay for streams); the last added is the outermost, so 413s are counted
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AdmissionMiddleware, admission=admission, paths=ENDPOINTS)
    app.add_middleware(RequestMetrics, endpoints=ENDPOINTS,
                       metrics=lambda: state["serving"].metrics if "serving" in state else None)
    _metadata_routes(app, settings, srv, auth, lifecycle)
    _generation_routes(app, srv, auth, lifecycle)
    app.include_router(directions_router(settings, srv))  # POST / DELETE: the live registry
    app.include_router(activations_router(settings, srv, auth))  # POST /v1/activations
    if settings.ui_enabled:  # the browser playground (static files, no auth: its API calls carry the key)
        from server.ui import mount_ui

        mount_ui(app)
    return app


def _metadata_routes(app: FastAPI, settings: Settings, srv: Callable[[], Serving], auth: Any,
                     lifecycle: Lifecycle) -> None:
    """``/health``, ``/v1/models``, ``GET /v1/directions``, ``/metrics``."""

    @app.get("/health", responses=HEALTH)
    async def health() -> dict[str, str]:
        from vllm.v1.engine.exceptions import EngineDeadError

        refusal = lifecycle.refusal()
        if refusal is not None:  # readiness drops while draining, liveness when the engine died
            raise refusal
        try:
            await srv().engine.check_health()
        except EngineDeadError as e:
            lifecycle.engine_died(str(e))
            raise APIError(503, f"engine is not healthy: {e}", type="service_unavailable", code="engine_dead") from e
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[auth], responses=METADATA)
    async def models() -> ModelList:
        return srv().models()

    @app.get("/v1/directions", dependencies=[auth], responses=METADATA)
    async def directions() -> DirectionList:
        s = srv()
        cards = [DirectionCard.of(b, live=b.name in s.steering.entries) for b in s.steering.bundles().values()]
        return DirectionList(data=cards, default_steering=wire(s.steering.default_ops))

    @app.get("/metrics", dependencies=[auth] if settings.metrics_require_auth else [], include_in_schema=False)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(srv().metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _generation_routes(app: FastAPI, srv: Callable[[], Serving], auth: Any, lifecycle: Lifecycle) -> None:
    """``/v1/completions``, ``/v1/chat/completions`` and ``/v1/probes/score``."""

    async def _complete(req: CompletionRequest | ChatCompletionRequest, request: Request) -> Any:
        s = srv()
        if req.stream:
            gen = await stream(s, req)
            return StreamingResponse(guard_stream(gen, lifecycle), media_type="text/event-stream")
        return JSONResponse(await until_disconnect(request, collect(s, req)))

    # the routes return their responses (JSON or SSE) themselves; response_model documents them
    @app.post("/v1/completions", dependencies=[auth], response_model=CompletionResponse,
              responses={**GENERATION, **streamed(CompletionChunk)})
    async def completions(req: CompletionRequest, request: Request) -> Any:
        return await _complete(req, request)

    @app.post("/v1/chat/completions", dependencies=[auth], response_model=ChatCompletionResponse,
              responses={**GENERATION, **streamed(ChatCompletionChunk)})
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        return await _complete(req, request)

    @app.post("/v1/probes/score", dependencies=[auth], responses=GENERATION)
    async def probes_score(req: ProbeScoreRequest, request: Request) -> ProbeScoreList:
        return ProbeScoreList.model_validate(await until_disconnect(request, score_texts(srv(), req)))


async def until_disconnect(request: Request, work: Awaitable[Any], poll_s: float = 0.5) -> Any:
    """Run ``work``; cancel it (which aborts its engine requests) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "client closed the request", code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()
