"""Fakes of the engine and tokenizer behind ``Serving`` for HTTP-layer unit tests.

:class:`FakeEngine` yields ``min(max_tokens, 3)`` one-token deltas per choice and publishes probe
rows through the real probe channel as the worker does (logit :func:`fake_logit` of the prompt
length and position); :class:`FakeTokenizer` maps characters to ids.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from server.serving import Serving
from server.settings import Settings
from steering.bundle import DirectionBundle
from steering.engine import PreparedEngine
from steering.vllm.probe_channel import CONTRASTED, STEERED, ProbeSender, StepMessage
from tests.support.tiny import INFO, make_bundle

KEY = "sk-unit"


def fake_logit(prompt_len: int, position: int) -> float:
    return 0.25 * position - 0.1 * prompt_len


def sig(z: float) -> float:
    """The logistic function: a probe score from its logit."""
    return 1 / (1 + math.exp(-z))


def flags(step: int, gated: bool, decode_gated: bool) -> int:
    """The worker's flags of a sampling row: steered from the second step on, contrasted every other step."""
    if not (gated or decode_gated):
        return -1
    return (STEERED if gated and step >= 1 else 0) | (CONTRASTED if decode_gated and step % 2 == 0 else 0)


class FakeEngine:
    """Yields ``min(max_tokens, 3)`` one-token deltas per choice; publishes probe rows like the worker."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], Any, str]] = []
        self.aborted: list[str] = []
        self.sender = ProbeSender()

    async def collective_rpc(self, method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        if method == "truthsteer_probe_ping":  # what the worker extension does
            return [self.sender.ping(*args)]
        assert method == "truthsteer_probe_address"
        return [self.sender.address]

    async def generate(self, prompt: dict[str, Any], params: Any, rid: str) -> AsyncIterator[Any]:
        self.requests.append((prompt, params, rid))
        ids = prompt["prompt_token_ids"]
        ext = (params.extra_args or {}).get("truthsteer") or {}
        probe = ext.get("probes")
        gated = any(op.get("gate") for op in ext.get("steering", []))
        decode_gated = bool((ext.get("decoding") or {}).get("gate"))
        steps = min(params.max_tokens, 3)
        for step in range(steps):
            pos = len(ids) - 1 + step
            if probe:
                rows = [pos] if not probe["prompt"] or step else list(range(len(ids)))
                self.sender.send(StepMessage(["truth"], [(probe["id"], rows, [[fake_logit(len(ids), p)] for p in rows],
                                                              [-1] * (len(rows) - 1) + [flags(step, gated, decode_gated)])]))
                await asyncio.sleep(0)
            plp = None
            if params.prompt_logprobs is not None and step == 0:
                plp = [None] + [{t: SimpleNamespace(logprob=-0.5 * j, rank=1)} for j, t in enumerate(ids[1:], 1)]
            for k in range(params.n):
                yield SimpleNamespace(
                    prompt_token_ids=ids, prompt_logprobs=plp,
                    outputs=[SimpleNamespace(index=k, text=" Paris", token_ids=[7042],
                                             logprobs=None if params.logprobs is None else
                                             [{7042: SimpleNamespace(logprob=-0.25, rank=1)}],
                                             finish_reason="length" if step == steps - 1 else None)],
                    finished=step == steps - 1 and k == params.n - 1,
                )

    async def abort(self, rid: str) -> None:
        self.aborted.append(rid)

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        self.sender.close()


class FakeTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 1000 for c in text]}

    def __len__(self) -> int:
        return 1000

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def fake_serving(settings: Settings, bundle: DirectionBundle | None = None) -> Serving:
    """A Serving over a FakeEngine (its own probe channel) and the tiny model's ``truth`` bundle."""
    prepared = PreparedEngine("/models/tiny", INFO, {"truth": bundle or make_bundle("truth")}, {})
    return Serving(settings, FakeEngine(), prepared, FakeTokenizer())
