"""The evaluation's only way into the model: truthsteer's public HTTP API (OpenAI completions with
``echo`` + ``logprobs``, ``/v1/probes/score``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tqdm.asyncio import tqdm_asyncio


class Unsupported(Exception):
    """The server rejected a configuration (4xx): recorded as unsupported, never scored."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"unsupported ({status}): {message}")
        self.status = status


@dataclass(frozen=True)
class Scored:
    """Log-probabilities of the continuation tokens (those starting at or after ``len(context)``)."""

    logprobs: list[float]

    @property
    def total(self) -> float:
        return sum(self.logprobs)


class Api:
    def __init__(self, base: str, model: str, concurrency: int = 8, batch: int = 8, timeout: float = 1800) -> None:
        self.base = base.rstrip("/")
        self.model = model
        self.batch = batch
        self._sem = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._sem:
            for attempt in range(3):  # a keep-alive connection the server closed meanwhile: send again
                try:
                    r = await self._client.post(f"{self.base}{path}", json={"model": self.model, **body})
                    break
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    if attempt == 2:
                        raise
        if 400 <= r.status_code < 500:
            raise Unsupported(r.status_code, r.json().get("error", {}).get("message", r.text))
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    async def score(self, contexts: Sequence[str], continuations: Sequence[str], extra: dict[str, Any],
                    desc: str = "score") -> list[Scored]:
        """Log-likelihood of each continuation given its context, one echo request per batch."""
        texts = [c + x for c, x in zip(contexts, continuations, strict=True)]
        chunks = [range(i, min(i + self.batch, len(texts))) for i in range(0, len(texts), self.batch)]

        async def one(idx: range) -> list[Scored]:
            body = {"prompt": [texts[i] for i in idx], "max_tokens": 1, "temperature": 0, "echo": True,
                    "logprobs": 0, **extra}
            data = await self.post("/v1/completions", body)
            choices = sorted(data["choices"], key=lambda c: c["index"])
            return [continuation(c["logprobs"], len(contexts[i])) for c, i in zip(choices, idx, strict=True)]

        results = await tqdm_asyncio.gather(*[one(r) for r in chunks], desc=desc, leave=False)
        return [s for part in results for s in part]

    async def probe_scores(self, texts: Sequence[str], probes: Sequence[str], reduce: str = "last") -> list[dict[str, float | None]]:
        out: list[dict[str, float | None]] = []
        for i in range(0, len(texts), self.batch):
            data = await self.post("/v1/probes/score", {"input": list(texts[i:i + self.batch]), "probes": list(probes),
                                                       "reduce": reduce})
            out.extend(d["scores"] for d in sorted(data["data"], key=lambda d: d["index"]))
        return out

    async def generate(self, prompt: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
        data = await self.post("/v1/completions", body)
        choice: dict[str, Any] = data["choices"][0]
        return choice


def continuation(logprobs: dict[str, Any], start: int) -> Scored:
    """The echoed tokens whose text starts at or after character ``start`` of the prompt. The
    generated token (last entry, beyond the prompt) is dropped: ``max_tokens`` is 1."""
    offsets: list[int] = logprobs["text_offset"]
    lps: list[float | None] = logprobs["token_logprobs"]
    n_prompt = len(offsets) - 1
    # the first prompt token has no logprob (None): with an empty context it is skipped
    picked = [float(lp) for off, lp in zip(offsets[:n_prompt], lps[:n_prompt], strict=True)
              if off >= start and lp is not None]
    if not picked:
        raise ValueError("continuation has no scored tokens")
    return Scored(picked)
