"""Completions and chat completions: collect or stream choice pieces in OpenAI's shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.formatting import chat_logprobs, completion_logprobs, new_id, now, sse
from server.probing import summarize
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.selective import decide_abstain, interventions, token_flags
from server.serving import Piece, Plan, Serving

Req = CompletionRequest | ChatCompletionRequest


def _is_chat(req: Req) -> bool:
    return isinstance(req, ChatCompletionRequest)


def _endpoint(req: Req) -> str:
    return "chat" if _is_chat(req) else "completions"


async def _pieces(serving: Serving, req: Req) -> tuple[Plan, AsyncIterator[tuple[int, Piece]], str]:
    from vllm.utils.async_utils import merge_async_iterators

    plan = await serving.build_async(req)  # chat template and tokenisation off the event loop
    rid = new_id("chatcmpl" if _is_chat(req) else "cmpl")
    gens = [serving.generate(job, plan.scored, _endpoint(req)) for job in plan.jobs]
    return plan, merge_async_iterators(*gens), rid


def _logprobs(req: Req, tok: Any, ids: list[int], lps: Any, offset: int = 0) -> dict[str, Any] | None:
    if isinstance(req, ChatCompletionRequest):
        return chat_logprobs(tok, ids, lps, req.top_logprobs or 0)
    return completion_logprobs(tok, ids, lps, offset)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class ChoiceState:
    """Everything one choice accumulated so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] | None = None
    finish_reason: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    flags: dict[int, int] = field(default_factory=dict)  # token index -> STEERED | CONTRASTED
    prompt_logprobs: list[Any] | None = None

    def add(self, p: Piece) -> None:
        self.prompt_logprobs = p.prompt_logprobs or self.prompt_logprobs
        self.flags.update({len(self.token_ids) + k: v for k, v in (p.flags or {}).items()})
        self.text += p.text
        self.token_ids += p.token_ids
        if p.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(p.logprobs)
        self.finish_reason = p.finish_reason or self.finish_reason
        self.prompt_token_ids = p.prompt_token_ids or self.prompt_token_ids
        for name, vals in (p.probe_tokens or {}).items():
            self.scores.setdefault(name, []).extend(vals)


def probe_summary(serving: Serving, st: ChoiceState, shown: list[str]) -> dict[str, Any]:
    out = {}
    for name in shown:
        s = summarize(st.scores.get(name, []), serving.probes[name])
        out[name] = s
        if s["mean"] is not None:
            serving.metrics.probe_score.labels(name).observe(s["mean"])
            if s["flagged"]:
                serving.metrics.probe_flagged.labels(name).inc()
    return out


def finish_choice(serving: Serving, req: Req, plan: Plan, st: ChoiceState, choice: dict[str, Any],
                  text_key: str) -> None:
    """Probe summary, interventions and abstention of a finished choice (mutates ``choice``)."""
    if plan.probes:
        choice["probe_scores"] = probe_summary(serving, st, plan.probes)
    dec = plan.decoding if plan.decoding is not None and plan.decoding.active else None
    if plan.ops or dec is not None:
        iv = interventions(plan.ops, dec, len(st.token_ids), st.flags)
        choice["interventions"] = iv
        for d in sorted({op.direction for op in plan.ops}):
            serving.metrics.intervention_tokens.labels(d, "steered").inc(iv["steered_tokens"])
        if dec is not None and iv["contrasted_tokens"]:
            serving.metrics.intervention_tokens.labels(dec.method, "contrasted").inc(iv["contrasted_tokens"])
    ab = plan.abstain
    if ab is not None:
        decision = decide_abstain(st.scores.get(ab.probe, []), ab.below, ab.reduce)
        info: dict[str, Any] = {"probe": ab.probe, "reduce": ab.reduce, "score": decision.score,
                                "below": ab.below, "abstained": decision.abstained}
        if decision.abstained:
            serving.metrics.abstentions.labels(ab.probe).inc()
            if ab.return_original:
                info["original"] = _text_of(choice, text_key)
            _set_text(choice, text_key, ab.message)
            choice["finish_reason"] = "abstained"
        choice["abstain"] = info


def _text_of(choice: dict[str, Any], key: str) -> str:
    holder = choice.get(key)
    return str(holder.get("content", "")) if isinstance(holder, dict) else str(holder or "")


def _set_text(choice: dict[str, Any], key: str, text: str) -> None:
    holder = choice.get(key)
    if isinstance(holder, dict):
        holder["content"] = text
    else:
        choice[key] = text


def _account(serving: Serving, plan: Plan, states: dict[int, ChoiceState]) -> int:
    completion = sum(len(s.token_ids) for s in states.values())
    serving.metrics.prompt_tokens.inc(plan.n_prompt_tokens)
    serving.metrics.completion_tokens.inc(completion)
    for s in states.values():
        serving.metrics.completion_length.observe(len(s.token_ids))
    return completion


async def collect(serving: Serving, req: Req) -> dict[str, Any]:
    plan, pieces, rid = await _pieces(serving, req)
    tok = serving.tokenizer
    states: dict[int, ChoiceState] = {}
    async for _i, p in pieces:
        states.setdefault(p.index, ChoiceState()).add(p)
    choices = []
    for index in sorted(states):
        st = states[index]
        choice: dict[str, Any] = {"index": index}
        if isinstance(req, ChatCompletionRequest):
            choice["message"] = {"role": "assistant", "content": st.text}
            choice["logprobs"] = _logprobs(req, tok, st.token_ids, st.logprobs)
        else:
            prefix = tok.decode(st.prompt_token_ids) if req.echo else ""
            choice["text"] = prefix + st.text
            if req.echo and req.logprobs is not None:  # prompt tokens first (the first has no logprob)
                lps = list(st.prompt_logprobs or [None] * len(st.prompt_token_ids)) + list(st.logprobs or [])
                choice["logprobs"] = completion_logprobs(tok, st.prompt_token_ids + st.token_ids, lps)
            else:
                choice["logprobs"] = _logprobs(req, tok, st.token_ids, st.logprobs)
        choice["finish_reason"] = st.finish_reason
        finish_choice(serving, req, plan, st, choice, "message" if _is_chat(req) else "text")
        choices.append(choice)
    completion = _account(serving, plan, states)
    return {
        "id": rid,
        "object": "chat.completion" if _is_chat(req) else "text_completion",
        "created": now(),
        "model": serving.model_name,
        "choices": choices,
        "usage": _usage(plan.n_prompt_tokens, completion),
    }


def _whole_chunk(serving: Serving, req: Req, plan: Plan, st: ChoiceState, index: int, rid: str, obj: str,
                 created: int, include_usage: bool) -> dict[str, Any]:
    """One chunk carrying a whole choice (streams with abstention decide at the end)."""
    tok = serving.tokenizer
    choice: dict[str, Any] = {"index": index}
    key = "delta" if _is_chat(req) else "text"
    choice[key] = {"role": "assistant", "content": st.text} if _is_chat(req) else st.text
    choice["logprobs"] = _logprobs(req, tok, st.token_ids, st.logprobs)
    choice["finish_reason"] = st.finish_reason
    finish_choice(serving, req, plan, st, choice, key)
    _add_token_flags(plan, st, choice, 0, len(st.token_ids))
    if "probe_scores" in choice:
        summary = choice.pop("probe_scores")
        choice["probe_scores"] = {k: v["tokens"] for k, v in summary.items()}
        choice["probe_summary"] = summary
    chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": serving.model_name,
                             "choices": [choice]}
    if include_usage:
        chunk["usage"] = None
    return chunk


def _add_token_flags(plan: Plan, st: ChoiceState, choice: dict[str, Any], start: int, count: int) -> None:
    """Stream chunks of steered or contrasted requests: ``token_flags`` of the chunk's tokens."""
    dec = plan.decoding if plan.decoding is not None and plan.decoding.active else None
    if plan.ops or dec is not None:
        choice["token_flags"] = token_flags(plan.ops, dec, start, count, st.flags)


async def stream(serving: Serving, req: Req) -> AsyncIterator[str]:
    """Validate first (errors become 4xx before any byte is sent), then yield SSE lines."""
    plan, pieces, rid = await _pieces(serving, req)
    return _sse(serving, req, plan, pieces, rid)


async def _sse(serving: Serving, req: Req, plan: Plan, pieces: AsyncIterator[tuple[int, Piece]],
               rid: str) -> AsyncIterator[str]:
    tok = serving.tokenizer
    created = now()
    chat = isinstance(req, ChatCompletionRequest)
    obj = "chat.completion.chunk" if chat else "text_completion"
    states: dict[int, ChoiceState] = {}
    offsets: dict[int, int] = {}
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    try:
        async for _i, p in pieces:
            first = p.index not in states
            st = states.setdefault(p.index, ChoiceState())
            st.add(p)
            if plan.abstain is not None:  # decided at the end: each choice is sent whole
                if p.finish_reason is not None:
                    yield sse(_whole_chunk(serving, req, plan, st, p.index, rid, obj, created, include_usage))
                continue
            choice: dict[str, Any] = {"index": p.index}
            if chat:
                delta: dict[str, Any] = {"content": p.text}
                if first:
                    delta["role"] = "assistant"
                choice["delta"] = delta
                choice["logprobs"] = _logprobs(req, tok, p.token_ids, p.logprobs)
            else:
                off = offsets.get(p.index, 0)
                choice["text"] = p.text
                choice["logprobs"] = _logprobs(req, tok, p.token_ids, p.logprobs, off)
                offsets[p.index] = off + len(p.text)
            choice["finish_reason"] = p.finish_reason
            if plan.probes:
                # this chunk's tokens; the final chunk of a choice also carries its summary
                choice["probe_scores"] = {k: v for k, v in (p.probe_tokens or {}).items() if k in plan.probes}
            _add_token_flags(plan, st, choice, len(st.token_ids) - len(p.token_ids), len(p.token_ids))
            if p.finish_reason is not None:
                done: dict[str, Any] = {}
                finish_choice(serving, req, plan, st, done, "text")
                if "probe_scores" in done:
                    choice["probe_summary"] = done["probe_scores"]
                if "interventions" in done:
                    choice["interventions"] = done["interventions"]
            chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": serving.model_name,
                                     "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            yield sse(chunk)
        completion = _account(serving, plan, states)
        if include_usage:
            yield sse({"id": rid, "object": obj, "created": created, "model": serving.model_name, "choices": [],
                       "usage": _usage(plan.n_prompt_tokens, completion)})
        yield "data: [DONE]\n\n"
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]
