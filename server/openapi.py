"""What ``/openapi.json`` says about errors, built in one place from the error model.

Invariants: every status an operation can answer is documented with :class:`ErrorBody` (the
shape ``server/errors.py`` produces); FastAPI's automatic 422 is removed, since validation
failures are answered with 400 (``errors.py``), never 422; a 429 documents ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

_WHY = {
    400: "Invalid request (the message and `param` name the field; `code`: `invalid_value`, "
         "`invalid_steering`, `invalid_decoding`, ...)",
    401: "Missing or invalid API key (only when the server has api_keys)",
    404: "Unknown model (`code: model_not_found`) or path",
    413: "Request body larger than max_body_bytes",
    429: "Too many requests waiting for the engine, or too many in flight for this API key; retry after "
         "Retry-After seconds",
    500: "Internal error (a bug; the server log has the trace)",
    503: "The engine is starting, the server is shutting down (`shutting_down`), the engine died "
         "(`engine_dead`), or probe scores are unavailable",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for these error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        doc: dict[str, Any] = {"model": ErrorBody, "description": _WHY[code]}
        if code == 429:
            doc["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
        out[code] = doc
    return out


GENERATION = error_responses(400, 401, 404, 413, 429, 500, 503)


def streamed(chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A generation route's 200 with ``stream: true``: server-sent events, each ``data:`` a ``chunk``
    (``server/responses.py``), then ``data: [DONE]``. No ``schema`` (it would have to describe every
    event, ``[DONE]`` included, as JSON): the chunk's schema is named in ``x-chunk-schema``."""
    return {200: {
        "description": f"The response; with `stream: true` server-sent events: `data: <{chunk.__name__}>` "
                       "per piece, then `data: [DONE]`",
        "content": {"text/event-stream": {"x-chunk-schema": {"$ref": f"#/components/schemas/{chunk.__name__}"}}}}}
METADATA = error_responses(401, 500, 503)
HEALTH = error_responses(503)


def install_openapi(app: FastAPI, extra_models: Sequence[type[BaseModel]] = ()) -> None:
    """Strip FastAPI's 422 (never sent) from the generated document; add ``extra_models`` (the
    stream chunks, which no route returns as JSON) to its schemas."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = default()
        for ops in doc.get("paths", {}).values():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _, extra = models_json_schema([(m, "serialization") for m in extra_models],
                                      ref_template="#/components/schemas/{model}")
        for name, schema in extra.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
