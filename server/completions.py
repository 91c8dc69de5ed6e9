"""Completions and chat completions: collect or stream a request's choices as response models.

Both paths run the same steps: the request's :class:`~server.shapes.Shape` (its endpoint's way
of formatting, chosen once), the plan and engine pieces from :class:`~server.serving.Serving`, a
:class:`~server.choices.ChoiceState` per choice, and when a choice finishes its
:class:`~server.choices.ChoiceOutcome`, decided once, which the response is formatted from and the
metrics record (``Metrics.record_choice``; ``Metrics.record_usage`` when the request completes).
Streams send each piece as a chunk as it arrives (one model and one ``model_dump_json`` per
chunk, nothing else per token), except with ``abstain``: the decision needs the whole choice, so
each choice is sent whole, in one chunk, when it finishes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from server.choices import ChoiceOutcome, ChoiceState, active_decoding, decide, marks_tokens
from server.formatting import new_id, now
from server.responses import Chunk, Response, Usage, chunk_line
from server.selective import token_flags
from server.serving import Piece, Plan, Serving
from server.shapes import Header, Req, Shape, shape_of

Pieces = AsyncIterator[tuple[int, Piece]]


async def _start(serving: Serving, req: Req) -> tuple[Shape, Plan, Pieces, Header]:
    from vllm.utils.async_utils import merge_async_iterators

    shape = shape_of(req, serving.tokenizer)
    plan = await serving.build_async(req)  # chat template and tokenisation off the event loop
    gens = [serving.generate(job, plan.scored, shape.endpoint) for job in plan.jobs]
    return shape, plan, merge_async_iterators(*gens), Header(new_id(shape.id_prefix), now(), serving.model_name)


def _finish(serving: Serving, plan: Plan, st: ChoiceState, shown: str) -> ChoiceOutcome:
    """A choice finished: its outcome, recorded in the metrics."""
    out = decide(serving.probes, plan, st, shown)
    serving.metrics.record_choice(out)
    return out


def _usage(serving: Serving, plan: Plan, states: dict[int, ChoiceState]) -> Usage:
    """A request completed: its token counts, recorded in the metrics."""
    completion = serving.metrics.record_usage(plan.n_prompt_tokens, (len(s.token_ids) for s in states.values()))
    return Usage.of(plan.n_prompt_tokens, completion)


async def complete(serving: Serving, req: Req) -> Response:
    """The whole response of a non-streamed request."""
    shape, plan, pieces, header = await _start(serving, req)
    states: dict[int, ChoiceState] = {}
    async for _i, p in pieces:
        states.setdefault(p.index, ChoiceState()).add(p)
    choices = []
    for index in sorted(states):
        st = states[index]
        out = _finish(serving, plan, st, shape.shown(st))
        choices.append(shape.choice(index, st, out))
    return shape.response(header, choices, _usage(serving, plan, states))


async def collect(serving: Serving, req: Req) -> dict[str, Any]:
    """:func:`complete`'s response as the JSON object the route sends."""
    return (await complete(serving, req)).model_dump(mode="json")


async def stream(serving: Serving, req: Req) -> AsyncIterator[str]:
    """Validate first (errors become 4xx before any byte is sent), then yield SSE lines."""
    shape, plan, pieces, header = await _start(serving, req)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return _sse(serving, shape, plan, pieces, header, include_usage)


async def _sse(serving: Serving, shape: Shape, plan: Plan, pieces: Pieces, header: Header,
               include_usage: bool) -> AsyncIterator[str]:
    states: dict[int, ChoiceState] = {}
    try:
        async for _i, p in pieces:
            first = p.index not in states
            st = states.setdefault(p.index, ChoiceState())
            st.add(p)
            if plan.abstain is not None:  # decided at the end: each choice is sent whole
                if p.finish_reason is not None:
                    chunk = _whole_chunk(shape, plan, st, p.index, header, _finish(serving, plan, st, st.text))
                    yield chunk_line(chunk, include_usage)
                continue
            out = _finish(serving, plan, st, st.text) if p.finish_reason is not None else None
            yield chunk_line(_piece_chunk(shape, plan, st, p, first, header, out), include_usage)
        usage = _usage(serving, plan, states)
        if include_usage:
            yield chunk_line(shape.chunk(header, [], usage), True)
        yield "data: [DONE]\n\n"
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]


def _piece_chunk(shape: Shape, plan: Plan, st: ChoiceState, p: Piece, first: bool, header: Header,
                 out: ChoiceOutcome | None) -> Chunk:
    """The chunk of one piece (``st`` already holds it): its tokens' probe scores and flags; the
    final piece of a choice (``out`` given) also carries the choice's probe summary and
    interventions."""
    additions: dict[str, Any] = {}
    if plan.probes:
        additions["probe_scores"] = {k: v for k, v in (p.probe_tokens or {}).items() if k in plan.probes}
    n = len(p.token_ids)
    if marks_tokens(plan):
        additions["token_flags"] = token_flags(plan.ops, active_decoding(plan), len(st.token_ids) - n, n, st.flags)
    if out is not None:
        additions.update(probe_summary=out.probe_scores, interventions=out.interventions)
    tokens = (p.token_ids, p.logprobs, len(st.text) - len(p.text))  # offset: the choice's text before
    return shape.chunk(header, [shape.chunk_choice(p.index, p.text, first, tokens, p.finish_reason, **additions)])


def _whole_chunk(shape: Shape, plan: Plan, st: ChoiceState, index: int, header: Header,
                 out: ChoiceOutcome) -> Chunk:
    """One chunk carrying a whole finished choice (streams with abstention): ``probe_scores`` are
    its tokens' scores, ``probe_summary`` their summary."""
    flags = token_flags(plan.ops, active_decoding(plan), 0, len(st.token_ids), st.flags) if marks_tokens(plan) else None
    scores = {k: v.tokens for k, v in out.probe_scores.items()} if out.probe_scores is not None else None
    choice = shape.chunk_choice(index, out.text, True, (st.token_ids, st.logprobs, 0), out.finish_reason,
                                probe_scores=scores, token_flags=flags, probe_summary=out.probe_scores,
                                interventions=out.interventions, abstain=out.abstain)
    return shape.chunk(header, [choice])
