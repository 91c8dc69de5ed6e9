"""Serving logic: OpenAI requests -> steered vLLM requests -> OpenAI responses and SSE chunks.

Raises :class:`~server.errors.APIError` / :class:`~steering.errors.SpecError` for client errors;
routes stay thin and ``errors.py`` maps everything to OpenAI's error shape.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import APIError, bad_request
from server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from server.settings import Settings
from steering.engine import EngineOptions, PreparedEngine, prepare
from steering.spec import EXTRA_ARGS_KEY, Limits, cache_salt, resolve, wire


@dataclass
class Prepared:
    """One prompt ready for the engine."""

    prompt: dict[str, Any]
    n_prompt: int


def default_model_name(model: str | None, prepared: PreparedEngine) -> str:
    from steering.models import DEFAULT_MODEL, PACKAGED_MODELS

    if model is None or model in PACKAGED_MODELS:
        return PACKAGED_MODELS[model or DEFAULT_MODEL].display_name
    return Path(prepared.model_path).name or prepared.info.name


def _now() -> int:
    return int(time.time())


class Serving:
    def __init__(self, settings: Settings, engine: Any, prepared: PreparedEngine, tokenizer: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.prepared = prepared
        self.tokenizer = tokenizer
        self.model_name = settings.served_model_name or default_model_name(settings.model, prepared)
        self.limits = Limits(
            max_ops=settings.max_steering_ops,
            max_ops_per_layer=settings.max_ops_per_layer,
            max_abs_strength=settings.max_abs_strength,
        )
        self.created = _now()

    @classmethod
    def start(cls, settings: Settings) -> Serving:
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        opts = EngineOptions(
            model=settings.model,
            directions=settings.directions,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            kv_cache_gib=settings.kv_cache_gib,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            enforce_eager=settings.enforce_eager,
            max_ops_per_layer=settings.max_ops_per_layer,
            force=settings.force_directions,
            seed=settings.seed,
        )
        prepared = prepare(opts)
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**prepared.engine_kwargs))
        tokenizer = AutoTokenizer.from_pretrained(prepared.model_path)
        return cls(settings, engine, prepared, tokenizer)

    # ------------------------------------------------------------------ metadata
    def models(self) -> ModelList:
        return ModelList(
            data=[
                ModelCard(
                    id=self.model_name,
                    created=self.created,
                    root=self.prepared.model_path,
                    max_model_len=self.settings.max_model_len,
                )
            ]
        )

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"model '{name}' does not exist; this server serves '{self.model_name}'",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )

    # ------------------------------------------------------------------ request building
    def _sampling(self, req: CompletionRequest | ChatCompletionRequest, max_tokens: int, steering: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if isinstance(req, ChatCompletionRequest):
            logprobs = (req.top_logprobs or 0) if req.logprobs else None
        else:
            logprobs = req.logprobs
        extra = {EXTRA_ARGS_KEY: {"steering": wire(steering)}} if steering else None
        kind = RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY
        try:
            return SamplingParams(
                n=req.n,
                temperature=req.temperature,
                top_p=req.top_p,
                max_tokens=max_tokens,
                stop=req.stop,
                seed=req.seed,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                logprobs=logprobs,
                extra_args=extra,
                output_kind=kind,
            )
        except ValueError as e:  # vLLM's own checks on sampling parameters
            raise bad_request(str(e), None, "invalid_value") from e

    def _validate_common(self, req: CompletionRequest | ChatCompletionRequest) -> Any:
        self.check_model(req.model)
        if req.n > self.settings.max_n:
            raise bad_request(f"n must be <= {self.settings.max_n}", "n")
        if req.decoding is not None:
            raise bad_request("contrastive decoding is not available on this server yet", "decoding", "unsupported")
        if req.probes:
            raise bad_request("probe scores are not available on this server yet", "probes", "unsupported")
        ops = resolve(
            req.steering or [], self.prepared.bundles, self.prepared.info.num_layers, self.limits, "steering"
        )
        return ops

    def _budget(self, req: CompletionRequest | ChatCompletionRequest, n_prompt: int) -> int:
        limit = self.settings.max_model_len
        requested = req.max_completion_tokens if isinstance(req, ChatCompletionRequest) else None
        requested = requested or req.max_tokens
        param = "max_completion_tokens" if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens else "max_tokens"
        if n_prompt >= limit:
            raise bad_request(
                f"the prompt has {n_prompt} tokens; this model's context is {limit}", "messages"
                if isinstance(req, ChatCompletionRequest) else "prompt", "context_length_exceeded"
            )
        if requested is None:
            return min(self.settings.default_max_tokens, limit - n_prompt)
        if n_prompt + requested > limit:
            raise bad_request(
                f"{n_prompt} prompt tokens + {param}={requested} exceed the context of {limit} tokens",
                param,
                "context_length_exceeded",
            )
        return requested

    def _prompts(self, req: CompletionRequest | ChatCompletionRequest, salt: str | None) -> list[Prepared]:
        if isinstance(req, ChatCompletionRequest):
            messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in req.messages]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids_list = [self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        else:
            ids_list = [
                list(self.tokenizer(x)["input_ids"]) if isinstance(x, str) else list(x) for x in _prompt_items(req.prompt)
            ]
        vocab = len(self.tokenizer)
        out = []
        for ids in ids_list:
            if not ids:
                raise bad_request("prompt must not be empty", "prompt")
            if any(not 0 <= t < vocab for t in ids):
                raise bad_request(f"token ids must be in [0, {vocab})", "prompt")
            prompt: dict[str, Any] = {"prompt_token_ids": ids}
            if salt:
                prompt["cache_salt"] = salt
            out.append(Prepared(prompt, len(ids)))
        return out

    def build(self, req: CompletionRequest | ChatCompletionRequest) -> tuple[list[Prepared], Any, list[Any]]:
        ops = self._validate_common(req)
        prompts = self._prompts(req, cache_salt(ops))
        max_tokens = min(self._budget(req, p.n_prompt) for p in prompts)
        return prompts, self._sampling(req, max_tokens, ops), ops

    # ------------------------------------------------------------------ generation
    async def run(self, prompt: Prepared, params: Any, request_id: str) -> AsyncIterator[Any]:
        try:
            async for out in self.engine.generate(prompt.prompt, params, request_id):
                yield out
        finally:
            await self.engine.abort(request_id)


def _prompt_items(p: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The OpenAI ``prompt`` forms as a list of single prompts (text or token ids)."""
    if isinstance(p, str):
        return [p]
    if all(isinstance(x, int) for x in p):
        return [[int(x) for x in p]]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


def chat_logprobs(
    tokenizer: Any, token_ids: list[int], logprobs: list[dict[int, Any]] | None, top_k: int
) -> dict[str, Any] | None:
    """OpenAI chat ``logprobs.content``: the sampled token plus the ``top_k`` most likely ones.

    vLLM returns the top ``top_k`` entries (ranks 1..k) plus the sampled token when it ranks lower.
    """
    if logprobs is None:
        return None

    def entry(t: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([t])
        return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode())}

    content = []
    for tid, d in zip(token_ids, logprobs, strict=False):
        chosen = d.get(tid)
        top = sorted(((lp.rank, t, lp.logprob) for t, lp in d.items() if lp.rank is not None and lp.rank <= top_k))
        content.append(
            {
                **entry(tid, chosen.logprob if chosen else -9999.0),
                "top_logprobs": [entry(t, logprob) for _rank, t, logprob in top],
            }
        )
    return {"content": content}


def completion_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[dict[int, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    tokens, tlp, top, offsets = [], [], [], []
    pos = offset
    for tid, d in zip(token_ids, logprobs, strict=False):
        tok = tokenizer.decode([tid])
        tokens.append(tok)
        chosen = d.get(tid)
        tlp.append(chosen.logprob if chosen else None)
        top.append({tokenizer.decode([t]): lp.logprob for t, lp in d.items()})
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": tlp, "top_logprobs": top, "text_offset": offsets}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
