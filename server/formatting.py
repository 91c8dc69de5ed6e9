"""OpenAI wire formatting: logprobs objects, ids, SSE lines."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def now() -> int:
    return int(time.time())


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


def completion_logprobs(
    tokenizer: Any, token_ids: list[int], logprobs: list[dict[int, Any] | None] | None, offset: int = 0
) -> dict[str, Any] | None:
    """Legacy completions ``logprobs``; a ``None`` entry (the first prompt token) has no logprob."""
    if logprobs is None:
        return None
    tokens: list[str] = []
    tlp: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    pos = offset
    for tid, d in zip(token_ids, logprobs, strict=False):
        tok = tokenizer.decode([tid])
        tokens.append(tok)
        chosen = d.get(tid) if d else None
        # -inf (a token outside DoLa's plausible set) as -9999.0, as vLLM's OpenAI server writes it
        tlp.append(max(chosen.logprob, -9999.0) if chosen else None)
        top.append({tokenizer.decode([t]): max(lp.logprob, -9999.0) for t, lp in d.items()} if d else None)
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": tlp, "top_logprobs": top, "text_offset": offsets}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
