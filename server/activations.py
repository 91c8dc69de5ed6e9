"""``POST /v1/activations``: residual-stream activations from the serving engine itself.

Each input (text or token ids) runs as one engine request (``max_tokens=1``, a private cache salt
so every prompt position is computed) whose ``extra_args`` ask the worker to capture the chosen
positions at the chosen layers in the same compiled pass (:mod:`steering.vllm.capture`); the rows
are taken back with an engine RPC once the request finishes and returned as base64 arrays with
their shape and dtype. Layer ``k`` is decoder layer ``k``'s output stream (HF's
``hidden_states[k + 1]``), the convention of steering and probes.

Limits: at most ``activation_rows`` positions per input (the worker's buffers; 413 above) and
``max_activation_values`` values per input (413); inputs wait for buffer rows, so the worker never
captures more rows in one step than it has.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from server.errors import APIError, bad_request
from server.settings import Settings
from steering.request import CaptureRequest, build

ACTIVATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad input, layers, positions or site (OpenAI error shape naming the parameter)"},
    401: {"description": "missing or invalid API key"},
    404: {"description": "unknown model, or capture disabled (activation_rows=0)"},
    413: {"description": "too many positions (activation_rows) or values (max_activation_values) per input"},
}


class ActivationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "SmolLM2-135M-Instruct", "input": ["Paris is in France."], "layers": [16], "positions": "last"}]})
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    layers: list[int] = Field(min_length=1, max_length=256, description="decoder layers (output stream of each)")
    positions: Literal["last", "all"] | list[int] = Field(default="last", description="last | all | token indices "
                                                          "(negative: from the end)")
    site: Literal["residual"] = Field(default="residual", description="residual: the stream after the layer")
    dtype: Literal["float32", "float16"] = "float32"


class ArrayB64(BaseModel):
    data: str = Field(description="base64 of the little-endian array bytes, row-major")
    shape: list[int]
    dtype: str


class Activation(BaseModel):
    index: int
    object: Literal["activation"] = "activation"
    tokens: int
    positions: list[int]
    layers: dict[str, ArrayB64] = Field(description="layer -> [positions, hidden] array")


class ActivationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Activation]
    model: str


class RowBudget:
    """Positions in flight, at most ``capacity``; waiters are served as rows free up."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


def pick_positions(spec: Literal["last", "all"] | list[int], n_tokens: int, param: str) -> list[int]:
    if spec == "last":
        return [n_tokens - 1]
    if spec == "all":
        return list(range(n_tokens))
    out = []
    for p in spec:
        if not -n_tokens <= p < n_tokens:
            raise bad_request(f"position {p} outside the input's {n_tokens} tokens", param, "invalid_value")
        out.append(p % n_tokens)
    if len(set(out)) != len(out):
        raise bad_request("positions contain duplicates", param, "invalid_value")
    return out


async def capture_one(s: Any, budget: RowBudget, ids: list[int], layers: list[int], positions: list[int]) -> Any:
    from vllm import SamplingParams

    cid = uuid.uuid4().hex
    contract = build(capture=CaptureRequest(cid, tuple(layers), frozenset(positions)))
    params = SamplingParams(max_tokens=1, temperature=0, extra_args=contract.extra_args())
    prompt = {"prompt_token_ids": ids, "cache_salt": cid}  # private: every position is computed
    await budget.acquire(len(positions))
    try:
        async for _ in s.engine.generate(prompt, params, cid):
            pass
        got = [r for r in await s.engine.collective_rpc("truthsteer_take_activations", args=(cid,)) if r]
    finally:
        await budget.release(len(positions))
    if not got or got[0]["positions"] != sorted(positions) or got[0]["layers"] != sorted(layers):
        raise APIError(503, "the engine returned no complete capture for this input", type="service_unavailable",
                       code="capture_incomplete")
    return got[0]


def activations_router(settings: Settings, srv: Callable[[], Any], auth: Any) -> APIRouter:
    router = APIRouter()
    budget = RowBudget(settings.activation_rows)

    @router.post("/v1/activations", dependencies=[auth], responses=ACTIVATION_RESPONSES)
    async def activations(req: ActivationRequest) -> ActivationList:
        s = srv()
        s.check_model(req.model)
        if settings.activation_rows == 0:
            raise APIError(404, "activation capture is disabled on this server (activation_rows=0)",
                           type="not_found_error", code="capture_disabled")
        nl, hs = s.prepared.info.num_layers, s.prepared.info.hidden_size
        bad = [k for k in req.layers if not 0 <= k < nl]
        if bad or len(set(req.layers)) != len(req.layers):
            raise bad_request(f"layers must be distinct and in [0, {nl}); got {req.layers}", "layers", "invalid_value")
        items = [req.input] if isinstance(req.input, str) or (req.input and isinstance(req.input[0], int)) \
            else list(req.input)
        if not items or len(items) > settings.max_probe_inputs:
            raise bad_request(f"input must hold 1 to {settings.max_probe_inputs} items", "input", "invalid_value")
        jobs = []
        for i, p in enumerate(s.tokenize(items, "input", None)):
            ids = p.prompt["prompt_token_ids"]
            param = "input" if len(items) == 1 else f"input[{i}]"
            if len(ids) >= settings.max_model_len:
                raise bad_request(f"{len(ids)} tokens; the context is {settings.max_model_len}", param,
                                  "context_length_exceeded")
            pos = pick_positions(req.positions, len(ids), "positions")
            if len(pos) > settings.activation_rows:
                raise APIError(413, f"{len(pos)} positions; at most {settings.activation_rows} per input "
                               "(activation_rows)", param="positions", code="too_many_positions")
            if len(pos) * len(req.layers) * hs > settings.max_activation_values:
                raise APIError(413, f"{len(pos)} positions x {len(req.layers)} layers x {hs} exceed "
                               f"max_activation_values={settings.max_activation_values}", param="layers",
                               code="too_many_values")
            jobs.append((ids, pos))
        got = await asyncio.gather(*(capture_one(s, budget, ids, req.layers, pos) for ids, pos in jobs))
        data = [_format(i, len(ids), pos, g, hs, req.dtype) for i, ((ids, pos), g) in enumerate(zip(jobs, got,
                                                                                                    strict=True))]
        return ActivationList(data=data, model=s.model_name)

    return router


def _format(index: int, n_tokens: int, positions: list[int], got: dict[str, Any], hs: int, dtype: str) -> Activation:
    order = sorted(range(len(positions)), key=lambda j: positions[j])  # got is sorted by position
    inverse = np.argsort(order)
    arr = np.frombuffer(got["data"], dtype="<f4").reshape(len(got["layers"]), len(positions), hs)[:, inverse]
    out_dtype = "<f4" if dtype == "float32" else "<f2"
    layers = {str(k): ArrayB64(data=base64.b64encode(arr[j].astype(out_dtype).tobytes()).decode(),
                               shape=[len(positions), hs], dtype=dtype) for j, k in enumerate(got["layers"])}
    return Activation(index=index, tokens=n_tokens, positions=positions, layers=layers)
