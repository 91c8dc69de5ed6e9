"""Routes of the live direction registry: ``POST /v1/directions``, ``DELETE /v1/directions/{name}``.

An upload is a truthsteer bundle (safetensors) or a llama.cpp control vector (GGUF), base64 in a
JSON body. It is validated by the very loaders used at start-up (:func:`steering.bundle.load_bundle`,
:func:`steering.gguf_io.import_gguf`) against the served model (hidden size, layer count, weight
fingerprint unless ``force_directions``), then written into a reserved slot of the worker's vector
tables (:class:`server.steering_state.SteeringState`); the next request can use it, no restart and
no recompilation. When ``api_keys`` are set, only ``admin_api_keys`` may change the registry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import APIError, bad_request
from server.settings import Settings
from steering.bundle import DirectionBundle, load_bundle
from steering.errors import BundleError, field_path
from steering.model_info import ModelInfo

GGUF_MAGIC = b"GGUF"


class DirectionPush(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="base64 of the bundle (.safetensors) or control vector (.gguf) file")
    format: Literal["safetensors", "gguf"] | None = Field(default=None, description="default: from the bytes")
    name: str | None = Field(default=None, description="GGUF: the direction's name (required); safetensors: must "
                             "equal the bundle's name when given")
    replace: bool = Field(default=False, description="swap an already registered direction of that name")
    recommended_layers: list[int] | None = Field(default=None, description="GGUF only; default: all its layers")


class DirectionPushed(BaseModel):
    object: Literal["direction"] = "direction"
    name: str
    layers: list[int]
    slot: int
    digest: str = Field(description="sha256 (32 hex) of the vectors' float32 bytes; enters the KV-cache salt")


class DirectionDeleted(BaseModel):
    object: Literal["direction"] = "direction"
    name: str
    deleted: bool = True


def _error(description: str) -> dict[str, Any]:
    return {"description": description + ' (OpenAI error shape: {"error": {"message", "type", "param", "code"}})'}


PUSH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("invalid upload: not base64, not a readable bundle, or not fitting the served model (param data, "
                "name)"),
    401: _error("missing or invalid API key"),
    403: _error("a valid key that is not in admin_api_keys (code admin_required)"),
    409: _error("name taken by a start-up or registered direction (direction_exists) or registry full / disabled "
                "(registry_full)"),
    413: _error("body larger than max_body_bytes"),
}
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: PUSH_RESPONSES[401], 403: PUSH_RESPONSES[403],
    404: _error("no registered direction of that name (direction_not_found)"),
    409: _error("a start-up bundle cannot be removed (direction_static)"),
}


def admin_auth(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    """Open when no api_keys are set; otherwise an admin key is required (401 without a valid key,
    403 with a valid non-admin key)."""
    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    admins = [k.get_secret_value().encode() for k in settings.admin_api_keys]

    def match(token: bytes, pool: list[bytes]) -> bool:
        return any(hmac.compare_digest(token, k) for k in pool)

    async def check(request: Request) -> None:
        if not keys and not admins:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        tok = token.strip().encode()
        if scheme.lower() == "bearer" and match(tok, admins):
            return
        if scheme.lower() == "bearer" and match(tok, keys):
            raise APIError(403, "changing the direction registry needs an admin key (setting admin_api_keys)",
                           type="permission_error", code="admin_required")
        raise APIError(401, "missing or invalid API key (Authorization: Bearer ...)", type="authentication_error",
                       code="invalid_api_key")

    return check


def decode_upload(body: DirectionPush, info: ModelInfo, force: bool) -> DirectionBundle:
    """Validate an upload exactly as start-up loads a bundle; BundleError/APIError name the field."""
    try:
        raw = base64.b64decode(body.data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"data is not valid base64 ({e})", "data", "invalid_bundle") from e
    fmt = body.format or ("gguf" if raw[:4] == GGUF_MAGIC else "safetensors")
    if fmt == "gguf" and not body.name:
        raise bad_request("a GGUF control vector needs a name", "name", "invalid_value")
    with tempfile.TemporaryDirectory(prefix="truthsteer-upload-") as d:
        path = Path(d) / f"upload.{fmt}"
        path.write_bytes(raw)
        try:
            bundle = _load(path, fmt, body, info, force)
        except BundleError as e:
            raise bad_request(str(e).replace(str(path), "data"), "data", "invalid_bundle") from e
    if bundle.meta.heads is not None:
        raise bad_request("bundles with attention-head vectors (site attn_heads) are loaded at start-up only; the "
                          "live registry holds residual-stream directions", "data", "invalid_bundle")
    if body.name is not None and bundle.name != body.name:
        raise bad_request(f"the bundle is named '{bundle.name}', not '{body.name}'", "name", "invalid_value")
    return bundle


def _load(path: Path, fmt: str, body: DirectionPush, info: ModelInfo, force: bool) -> DirectionBundle:
    if fmt == "safetensors":
        return load_bundle(path, info, force=force)
    from steering.gguf_io import import_gguf

    try:
        return import_gguf(path, info, str(body.name), recommended_layers=body.recommended_layers)
    except ValidationError as e:
        first = e.errors()[0]
        field = field_path(first["loc"]) or "data"
        raise bad_request(f"{field}: {first['msg']}", field if field in ("name", "recommended_layers") else "data",
                          "invalid_bundle") from e


def directions_router(settings: Settings, srv: Callable[[], Any]) -> APIRouter:
    """``srv()`` returns the running :class:`~server.serving.Serving` (503 while starting)."""
    router = APIRouter()
    admin = [Depends(admin_auth(settings))]

    @router.post("/v1/directions", dependencies=admin, responses=PUSH_RESPONSES)
    async def push_direction(body: DirectionPush) -> DirectionPushed:
        s = srv()
        bundle = await asyncio.to_thread(decode_upload, body, s.prepared.info, settings.force_directions)
        entry = await s.steering.push(bundle, body.replace, s.engine.collective_rpc)
        s.metrics.registered_directions.set(len(s.steering.entries))
        return DirectionPushed(name=bundle.name, layers=sorted(bundle.vectors), slot=entry.slot, digest=entry.digest)

    @router.delete("/v1/directions/{name}", dependencies=admin, responses=DELETE_RESPONSES)
    async def delete_direction(name: str) -> DirectionDeleted:
        s = srv()
        s.steering.remove(name)
        s.metrics.registered_directions.set(len(s.steering.entries))
        return DirectionDeleted(name=name)

    return router
