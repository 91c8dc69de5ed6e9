"""Response models of the OpenAI-compatible API: completions, chat completions, their stream chunks.

Every object the generation routes send is one of these models, serialised by pydantic; nothing is
assembled as a free dict. Invariants of the wire shape (what OpenAI clients and the API contract
tests expect; keys and values unchanged from the dicts these models replaced, keys in the models'
field order):

- OpenAI's own fields are always present, ``null`` where OpenAI sends ``null`` (``logprobs``,
  ``finish_reason``);
- truthsteer's additions (``probe_scores``, ``probe_summary``, ``token_flags``, ``interventions``,
  ``abstain``, ``abstain.original``) and a delta's ``role`` are *absent* when ``None``
  (``Field(exclude_if=...)``, :func:`_omitted`);
- a stream chunk's ``usage`` is ``null`` in every chunk of a stream that asked for usage and
  absent otherwise: the stream serialises with :func:`chunk_line` (``exclude={"usage"}`` when
  not asked), the final usage chunk carries :class:`Usage`.

``probe_scores`` is a :class:`ProbeSummary` per probe in a response but the per-token scores of
the chunk's tokens in a stream chunk (whose final chunk per choice carries ``probe_summary``).
Stream chunks are built on the per-token path; validating them is cheaper than
``model_construct`` (pydantic-core validates in Rust, ``model_construct`` is Python), so they are
built by their constructors like every other model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field


def _is_none(value: Any) -> bool:
    return value is None


def _omitted(description: str) -> Any:
    return Field(default=None, exclude_if=_is_none, description=description)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


# ---------------------------------------------------------------- logprobs (formatting.py fills them)
class CompletionLogprobs(BaseModel):
    """Legacy completions ``logprobs``; ``None`` entries: the first prompt token of an echo."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


# ---------------------------------------------------------------- truthsteer's additions
class ProbeSummary(BaseModel):
    """One probe over a choice's generated tokens (``None`` statistics: no token was scored)."""

    mean: float | None
    min: float | None
    last: float | None
    tokens: list[float | None] = Field(description="one calibrated score per generated token")
    flagged: bool = Field(description="the mean is on the risky side of the probe's threshold")


class Interventions(BaseModel):
    steered_tokens: int
    contrasted_tokens: int | None = Field(description="null when an entropy gate decides in the sampler")


class TokenFlags(BaseModel):
    """Per-token intervention flags of a stream chunk, parallel to its tokens; counts over a choice
    equal ``interventions``' ``steered_tokens`` / ``contrasted_tokens``."""

    steered: list[bool]
    contrasted: list[bool | None]


class AbstainResult(BaseModel):
    probe: str
    reduce: Literal["mean", "min", "last"]
    score: float | None = Field(description="the reduced score; null when no token was scored")
    below: float
    abstained: bool
    original: str | None = _omitted("the generated text, when abstained with return_original")


_PROBE_SCORES = "probes asked for: the summary per probe"
_CHUNK_PROBE_SCORES = "probes asked for: the scores of this chunk's tokens, per probe"
_TOKEN_FLAGS = "steered or contrasted requests: the flags of this chunk's tokens"
_PROBE_SUMMARY = "probes asked for, final chunk of a choice: the summary per probe"
_INTERVENTIONS = "steered or contrasted requests, finished choices: token counts"
_ABSTAIN = "requests with abstain, finished choices: the decision"
FinishReason = Annotated[str | None, Field(description='"stop", "length", "abstained" (abstain), ...')]


# ---------------------------------------------------------------- responses
class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason
    probe_scores: dict[str, ProbeSummary] | None = _omitted(_PROBE_SCORES)
    interventions: Interventions | None = _omitted(_INTERVENTIONS)
    abstain: AbstainResult | None = _omitted(_ABSTAIN)


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason
    probe_scores: dict[str, ProbeSummary] | None = _omitted(_PROBE_SCORES)
    interventions: Interventions | None = _omitted(_INTERVENTIONS)
    abstain: AbstainResult | None = _omitted(_ABSTAIN)


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# ---------------------------------------------------------------- stream chunks
class Delta(BaseModel):
    role: Literal["assistant"] | None = _omitted("the first chunk of a choice")
    content: str


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason
    probe_scores: dict[str, list[float | None]] | None = _omitted(_CHUNK_PROBE_SCORES)
    token_flags: TokenFlags | None = _omitted(_TOKEN_FLAGS)
    probe_summary: dict[str, ProbeSummary] | None = _omitted(_PROBE_SUMMARY)
    interventions: Interventions | None = _omitted(_INTERVENTIONS)
    abstain: AbstainResult | None = _omitted(_ABSTAIN)


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason
    probe_scores: dict[str, list[float | None]] | None = _omitted(_CHUNK_PROBE_SCORES)
    token_flags: TokenFlags | None = _omitted(_TOKEN_FLAGS)
    probe_summary: dict[str, ProbeSummary] | None = _omitted(_PROBE_SUMMARY)
    interventions: Interventions | None = _omitted(_INTERVENTIONS)
    abstain: AbstainResult | None = _omitted(_ABSTAIN)


_USAGE = "stream_options.include_usage: null, but the usage in the last chunk (no choices); absent otherwise"


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = Field(default=None, description=_USAGE)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(default=None, description=_USAGE)


Response = CompletionResponse | ChatCompletionResponse
Chunk = CompletionChunk | ChatCompletionChunk


def chunk_line(chunk: Chunk, include_usage: bool) -> str:
    """One SSE event (``data: {...}``) of a stream chunk; ``usage`` only in streams that asked for it."""
    return f"data: {chunk.model_dump_json(exclude=None if include_usage else {'usage'})}\n\n"
