"""OpenAI-shaped errors, mapped in one place.

Every client error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; the
handlers below turn validation failures, steering-spec errors (``invalid_steering``), decoding-spec
errors (``invalid_decoding``, also when pydantic rejects the typed ``decoding`` field: same message
and ``param`` as :func:`steering.decoding.spec.parse_decoding`) and our own :class:`APIError` into
that shape, so no client input ever produces a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from steering.decoding.spec import decoding_error
from steering.errors import SpecError, field_path


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        extra = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        return JSONResponse(self.body(), status_code=self.status, headers={**extra, **(headers or {})} or None)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def server_error(exc: BaseException, engine_dead: bool) -> APIError:
    """A failure that is not the client's: 503 ``engine_dead`` when the engine died, else 500."""
    if engine_dead:
        return APIError(503, "the inference engine died; the server is restarting", type="service_unavailable",
                        code="engine_dead")
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log", type="server_error",
                    code="internal_error")


def spec_error(exc: SpecError) -> APIError:
    """A steering or decoding spec error: 400 ``invalid_steering`` / ``invalid_decoding``."""
    return bad_request(str(exc), exc.param, exc.code)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    """A request-validation ``loc`` (``("body", "steering", 0, ...)``) as the ``param`` it names."""
    return field_path(p for p in loc if p not in ("body", "query", "path")) or None


def _respond(req: Request, err: APIError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    metrics = getattr(req.app.state, "metrics", None)
    if metrics is not None and 400 <= err.status < 500:
        metrics.rejected.labels(err.code or f"http_{err.status}").inc()
    return err.response(headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(req: Request, exc: APIError) -> JSONResponse:
        return _respond(req, exc)

    @app.exception_handler(SpecError)
    async def _spec_error(req: Request, exc: SpecError) -> JSONResponse:
        return _respond(req, spec_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        decoding = [e for e in errs if tuple(e.get("loc", ()))[:2] == ("body", "decoding")]
        if decoding and len(decoding) == len(errs):  # only the typed decoding field is wrong
            if all(len(e["loc"]) == 2 for e in decoding):  # not an object at all: the message of a JSON-object field
                return _respond(req, bad_request("decoding: Input should be a valid dictionary", "decoding",
                                                 "invalid_value"))
            return _respond(req, spec_error(decoding_error([{**e, "loc": tuple(e["loc"])[2:]} for e in decoding])))
        errs = [e for e in errs if e not in decoding]  # other fields first, as before decoding was typed
        # union branches each report an error; the telling one is where the value had the branch's
        # type but broke a constraint ([] against a non-empty list), the deepest such one first
        first = max(errs, key=lambda e: (not str(e.get("type", "")).endswith("_type"), len(e.get("loc", ()))),
                    default={"msg": "invalid request", "loc": ()})
        loc = tuple(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            return _respond(req, bad_request(f"request body is not valid JSON: {first.get('msg')}", None,
                                             "invalid_json"))
        param = _loc_to_param(loc)
        msg = str(first.get("msg", "invalid value"))
        text = f"{param}: {msg}" if param else msg
        return _respond(req, bad_request(text, param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            headers["Allow"] = ", ".join(allowed_methods(req))
        return _respond(req, APIError(exc.status_code, str(exc.detail), type=kind), headers)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        # not the client's fault: JSON instead of Starlette's plain-text 500 (the error is still logged)
        from server.lifecycle import is_engine_dead

        dead = is_engine_dead(exc)
        lifecycle = getattr(req.app.state, "lifecycle", None)
        if dead and lifecycle is not None:
            lifecycle.engine_died(str(exc))
            lifecycle.count_dead_error()
        return server_error(exc, dead).response()


def allowed_methods(req: Request) -> list[str]:
    """Every method some route of the app answers on this request's path (one path may be served by
    several routes: ``GET`` and ``POST /v1/directions`` live in different routers)."""
    from starlette.routing import Match, Route

    methods: set[str] = set()
    for route in req.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(req.scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)
