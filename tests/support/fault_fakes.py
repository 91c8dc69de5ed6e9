"""A scripted fake engine for the fault tests: held at its first output, dying on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from server.serving import Serving
from server.settings import Settings
from steering.engine import PreparedEngine
from tests.support.fakes import FakeTokenizer
from tests.support.tiny import INFO


class ScriptedEngine:
    """``generate`` waits for ``release`` (when set) before its first output, then yields
    ``min(max_tokens, 3)`` one-token deltas; after ``die_after`` outputs (over all requests) it
    raises vLLM's ``EngineDeadError``, and so does every later call, as vLLM's AsyncLLM does."""

    def __init__(self, die_after: int | None = None) -> None:
        self.release: asyncio.Event | None = None
        self.die_after = die_after
        self.outputs = 0
        self.errored = False
        self.waiting = 0  # requests held before their first output

    def _check(self) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.die_after is not None and self.outputs >= self.die_after:
            self.errored = True
        if self.errored:
            raise EngineDeadError()

    async def generate(self, prompt: dict[str, Any], params: Any, rid: str) -> AsyncIterator[Any]:
        self._check()
        if self.release is not None:
            self.waiting += 1
            try:
                await self.release.wait()
            finally:
                self.waiting -= 1
        steps = min(params.max_tokens, 3)
        for step in range(steps):
            self._check()
            self.outputs += 1
            yield SimpleNamespace(
                prompt_token_ids=prompt["prompt_token_ids"], prompt_logprobs=None,
                outputs=[SimpleNamespace(index=0, text=" x", token_ids=[120], logprobs=None,
                                         finish_reason="length" if step == steps - 1 else None)],
                finished=step == steps - 1)
            await asyncio.sleep(0)

    async def abort(self, rid: str) -> None:
        return None

    async def check_health(self) -> None:
        self._check()

    def shutdown(self) -> None:
        return None


def scripted_serving(settings: Settings, engine: ScriptedEngine) -> Serving:
    """A Serving over ``engine`` without bundles (so without a probe channel)."""
    return Serving(settings, engine, PreparedEngine("/models/tiny", INFO, {}, {}), FakeTokenizer())
