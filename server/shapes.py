"""What differs between ``/v1/completions`` and ``/v1/chat/completions``, chosen once per request.

:func:`shape_of` is the response path's one chat-or-completion branch. A shape names its endpoint
(the metrics label, the id prefix), formats logprobs its endpoint's way and builds its endpoint's
models (``server/responses.py``): a completion choice carries ``text``, a chat choice a
``message`` (a chunk: a ``delta``, with the role in a choice's first chunk). ``completions.py``
drives both through this interface and branches on nothing else. Shapes only format: they read
the choice state and outcome, record no metrics and change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from server.choices import ChoiceOutcome, ChoiceState
from server.formatting import chat_logprobs, completion_logprobs
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionLogprobs,
    CompletionResponse,
    Delta,
    Usage,
)

Req = CompletionRequest | ChatCompletionRequest
M = TypeVar("M", CompletionLogprobs, ChatLogprobs)
Tokens = tuple[list[int], Any, int]  # a chunk's token ids, their logprobs, its text's offset in the choice


def _model(cls: type[M], obj: dict[str, Any] | None) -> M | None:
    """``formatting.py``'s logprobs object as its model."""
    return None if obj is None else cls.model_validate(obj)


@dataclass(frozen=True)
class Header:
    """The fields every response and chunk of one request share."""

    id: str
    created: int
    model: str


@dataclass(frozen=True)
class CompletionShape:
    req: CompletionRequest
    tokenizer: Any
    endpoint: ClassVar[str] = "completions"
    id_prefix: ClassVar[str] = "cmpl"

    def logprobs(self, ids: list[int], lps: Any, offset: int = 0) -> CompletionLogprobs | None:
        return _model(CompletionLogprobs, completion_logprobs(self.tokenizer, ids, lps, offset))

    def shown(self, st: ChoiceState) -> str:
        """A collected choice's text; with ``echo`` it starts with the prompt."""
        return (self.tokenizer.decode(st.prompt_token_ids) if self.req.echo else "") + st.text

    def collected_logprobs(self, st: ChoiceState) -> CompletionLogprobs | None:
        """With ``echo`` and ``logprobs`` the prompt tokens lead (the first has no logprob)."""
        if self.req.echo and self.req.logprobs is not None:
            lps = list(st.prompt_logprobs or [None] * len(st.prompt_token_ids)) + list(st.logprobs or [])
            return _model(CompletionLogprobs,
                          completion_logprobs(self.tokenizer, st.prompt_token_ids + st.token_ids, lps))
        return self.logprobs(st.token_ids, st.logprobs)

    def choice(self, index: int, st: ChoiceState, out: ChoiceOutcome) -> CompletionChoice:
        return CompletionChoice(index=index, text=out.text, logprobs=self.collected_logprobs(st),
                                finish_reason=out.finish_reason,
                                probe_scores=out.probe_scores, interventions=out.interventions,
                                abstain=out.abstain)

    def response(self, h: Header, choices: list[Any], usage: Usage) -> CompletionResponse:
        return CompletionResponse(id=h.id, created=h.created, model=h.model, choices=choices, usage=usage)

    def chunk_choice(self, index: int, text: str, first: bool, tokens: Tokens, finish_reason: str | None,
                     **additions: Any) -> CompletionChunkChoice:
        return CompletionChunkChoice(index=index, text=text, logprobs=self.logprobs(*tokens),
                                     finish_reason=finish_reason, **additions)

    def chunk(self, h: Header, choices: list[Any], usage: Usage | None = None) -> CompletionChunk:
        return CompletionChunk(id=h.id, created=h.created, model=h.model, choices=choices, usage=usage)


@dataclass(frozen=True)
class ChatShape:
    req: ChatCompletionRequest
    tokenizer: Any
    endpoint: ClassVar[str] = "chat"
    id_prefix: ClassVar[str] = "chatcmpl"

    def logprobs(self, ids: list[int], lps: Any, offset: int = 0) -> ChatLogprobs | None:
        return _model(ChatLogprobs, chat_logprobs(self.tokenizer, ids, lps, self.req.top_logprobs or 0))

    def shown(self, st: ChoiceState) -> str:
        return st.text

    def collected_logprobs(self, st: ChoiceState) -> ChatLogprobs | None:
        return self.logprobs(st.token_ids, st.logprobs)

    def choice(self, index: int, st: ChoiceState, out: ChoiceOutcome) -> ChatChoice:
        return ChatChoice(index=index, message=ChatMessageOut(content=out.text), logprobs=self.collected_logprobs(st),
                          finish_reason=out.finish_reason, probe_scores=out.probe_scores,
                          interventions=out.interventions, abstain=out.abstain)

    def response(self, h: Header, choices: list[Any], usage: Usage) -> ChatCompletionResponse:
        return ChatCompletionResponse(id=h.id, created=h.created, model=h.model, choices=choices, usage=usage)

    def chunk_choice(self, index: int, text: str, first: bool, tokens: Tokens, finish_reason: str | None,
                     **additions: Any) -> ChatChunkChoice:
        return ChatChunkChoice(index=index, delta=Delta(role="assistant" if first else None, content=text),
                               logprobs=self.logprobs(*tokens), finish_reason=finish_reason, **additions)

    def chunk(self, h: Header, choices: list[Any], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=h.id, created=h.created, model=h.model, choices=choices, usage=usage)


Shape = CompletionShape | ChatShape


def shape_of(req: Req, tokenizer: Any) -> Shape:
    if isinstance(req, ChatCompletionRequest):
        return ChatShape(req, tokenizer)
    return CompletionShape(req, tokenizer)
