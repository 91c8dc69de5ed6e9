"""Completions and chat completions: collect or stream engine outputs in OpenAI's shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from server.protocol import ChatCompletionRequest, CompletionRequest
from server.serving import Serving, _now, chat_logprobs, completion_logprobs, new_id, sse

Req = CompletionRequest | ChatCompletionRequest


def _is_chat(req: Req) -> bool:
    return isinstance(req, ChatCompletionRequest)


async def _merged(serving: Serving, req: Req) -> tuple[AsyncIterator[tuple[int, Any]], list[int], str]:
    from vllm.utils.async_utils import merge_async_iterators

    prompts, params, _ops = serving.build(req)
    rid = new_id("chatcmpl" if _is_chat(req) else "cmpl")
    streams = [serving.run(p, params, f"{rid}-{i}") for i, p in enumerate(prompts)]
    return merge_async_iterators(*streams), [p.n_prompt for p in prompts], rid


def _logprobs(req: Req, tok: Any, ids: list[int], lps: Any, offset: int = 0) -> dict[str, Any] | None:
    if isinstance(req, ChatCompletionRequest):
        return chat_logprobs(tok, ids, lps, req.top_logprobs or 0)
    return completion_logprobs(tok, ids, lps, offset)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def collect(serving: Serving, req: Req) -> dict[str, Any]:
    merged, n_prompts, rid = await _merged(serving, req)
    tok = serving.tokenizer
    choices: dict[int, dict[str, Any]] = {}
    completion_tokens = 0
    async for i, out in merged:
        for c in out.outputs:
            index = i * req.n + c.index
            completion_tokens += len(c.token_ids)
            ids = list(c.token_ids)
            if isinstance(req, ChatCompletionRequest):
                choices[index] = {
                    "index": index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": _logprobs(req, tok, ids, c.logprobs),
                    "finish_reason": c.finish_reason,
                }
            else:
                text = c.text
                if req.echo:
                    text = tok.decode(out.prompt_token_ids) + text
                choices[index] = {
                    "index": index,
                    "text": text,
                    "logprobs": _logprobs(req, tok, ids, c.logprobs),
                    "finish_reason": c.finish_reason,
                }
    return {
        "id": rid,
        "object": "chat.completion" if _is_chat(req) else "text_completion",
        "created": _now(),
        "model": serving.model_name,
        "choices": [choices[k] for k in sorted(choices)],
        "usage": _usage(sum(n_prompts), completion_tokens),
    }


async def stream(serving: Serving, req: Req) -> AsyncIterator[str]:
    """Validate first (errors become 4xx before any byte is sent), then yield SSE lines."""
    merged, n_prompts, rid = await _merged(serving, req)
    return _sse(serving, req, merged, n_prompts, rid)


async def _sse(
    serving: Serving, req: Req, merged: AsyncIterator[tuple[int, Any]], n_prompts: list[int], rid: str
) -> AsyncIterator[str]:
    tok = serving.tokenizer
    created = _now()
    chat = isinstance(req, ChatCompletionRequest)
    obj = "chat.completion.chunk" if chat else "text_completion"
    started: set[int] = set()
    offsets: dict[int, int] = {}
    completion_tokens = 0
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    try:
        async for i, out in merged:
            for c in out.outputs:
                index = i * req.n + c.index
                ids = list(c.token_ids)
                completion_tokens += len(ids)
                if chat:
                    delta: dict[str, Any] = {"content": c.text}
                    if index not in started:
                        delta["role"] = "assistant"
                        started.add(index)
                    choice = {
                        "index": index,
                        "delta": delta,
                        "logprobs": _logprobs(req, tok, ids, c.logprobs),
                        "finish_reason": c.finish_reason,
                    }
                else:
                    off = offsets.get(index, 0)
                    choice = {
                        "index": index,
                        "text": c.text,
                        "logprobs": _logprobs(req, tok, ids, c.logprobs, off),
                        "finish_reason": c.finish_reason,
                    }
                    offsets[index] = off + len(c.text)
                chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": serving.model_name,
                                         "choices": [choice]}
                if include_usage:
                    chunk["usage"] = None
                yield sse(chunk)
        if include_usage:
            yield sse({"id": rid, "object": obj, "created": created, "model": serving.model_name, "choices": [],
                       "usage": _usage(sum(n_prompts), completion_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        await merged.aclose()  # type: ignore[attr-defined]
