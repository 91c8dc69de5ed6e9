"""An engine for HTTP-level tests whose steering runs the real worker runtime on the toy model.

``ToyEngine.generate`` embeds the prompt ids, runs :class:`~tests.support.toy.ToyModel` once per step
with the request's steering applied by a real :class:`~steering.vllm.runtime.SteeringRuntime`
(re-planned and re-read from the vector tables at every step, as in vLLM), and returns as the
step's text the exact float (``float.hex``) of the steered output's last row. Registry RPCs go to
the real worker extension. So a test can compare any two requests' steering bit for bit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any

import torch

import steering.vllm.custom_op  # noqa: F401  (registers torch.ops.truthsteer.steer)
from steering.bundle import DirectionBundle
from steering.vllm.capture import ActivationCapture
from steering.vllm.runtime import SteeringRuntime
from steering.vllm.worker_ext import TruthsteerWorkerExtension
from tests.support.toy import H, Req, ToyModel, fake_runner

VOCAB = 1000


class ToyTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % VOCAB for c in text]}

    def __len__(self) -> int:
        return VOCAB

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class ToyEngine:
    def __init__(self, bundles: Iterable[DirectionBundle], max_directions: int, max_inline: int,
                 steps: int = 3) -> None:
        self.model = ToyModel()
        self.runtime = SteeringRuntime(self.model.layers, bundles, hidden_size=H, max_tokens=256,
                                       max_ops_per_layer=4, device=torch.device("cpu"), dtype=torch.float32,
                                       max_directions=max_directions, max_inline=max_inline)
        # after the steering hooks, as the plugin installs it
        self.capture = ActivationCapture(self.model.layers, H, 16, torch.device("cpu"), torch.float32)
        self.ext = TruthsteerWorkerExtension()
        self.ext.model_runner = SimpleNamespace(truthsteer=self.runtime, truthsteer_capture=self.capture)
        self.embed = torch.randn(VOCAB, H, generator=torch.Generator().manual_seed(7))
        self.steps = steps
        self.requests: list[tuple[dict[str, Any], Any, str]] = []
        self.rpcs: list[str] = []
        self.step_delay_s = 0.0  # > 0: hold every request across more registry changes

    async def collective_rpc(self, method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        self.rpcs.append(method)
        return [getattr(self.ext, method)(*args)]

    def step(self, rid: str, ids: list[int], params: Any) -> str:
        req = Req(rid, n_prompt=len(ids), n_computed=0, n_sched=len(ids), extra=params.extra_args)
        plan = self.runtime.planner.plan(fake_runner([req]))
        self.runtime.prepare_step(plan)
        self.capture.prepare(plan)
        with torch.inference_mode():
            out = self.model(self.embed[ids])
        self.capture.collect()
        return float(out[-1].double().sum()).hex() + f"|{float(out[-1, 0]).hex()};"

    async def generate(self, prompt: dict[str, Any], params: Any, rid: str) -> AsyncIterator[Any]:
        self.requests.append((prompt, params, rid))
        ids = prompt["prompt_token_ids"]
        steps = min(params.max_tokens, self.steps)
        for step in range(steps):
            outs = [SimpleNamespace(index=k, text=self.step(f"{rid}-{k}", ids, params), token_ids=[1], logprobs=None,
                                    finish_reason="length" if step == steps - 1 else None) for k in range(params.n)]
            yield SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=None, outputs=outs, finished=step == steps - 1)
            await asyncio.sleep(self.step_delay_s)  # let registry changes and other requests interleave

    async def abort(self, rid: str) -> None:
        return None

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None
