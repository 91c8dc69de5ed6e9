"""A vLLM-shaped toy model and a fake model runner for worker-side tests (no vLLM engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from steering.request import EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, wire
from steering.vllm.step_plan import StepPlanner
from tests.support.tiny import INFO

H, L = INFO.hidden_size, INFO.num_layers


class ToyLayer(nn.Module):
    """Returns (hidden, residual) like a vLLM decoder layer: the stream is their sum."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(H, H, generator=g) / H**0.5)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        stream = hidden if residual is None else hidden + residual
        return torch.tanh(stream @ self.w), stream


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ToyLayer(i) for i in range(L)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, r = x, None
        for layer in self.layers:
            h, r = layer(h, r)
        assert r is not None
        return h + r


@dataclass
class Req:
    rid: str
    n_prompt: int
    n_computed: int
    n_sched: int
    steering: list[ResolvedOp] | None = None
    extra: dict[str, Any] | None = field(default=None)


def fake_runner(reqs: list[Req]) -> Any:
    qsl = np.zeros(len(reqs) + 1, dtype=np.int32)
    qsl[1:] = np.cumsum([r.n_sched for r in reqs])
    states = {}
    for r in reqs:
        extra = r.extra if r.extra is not None else (
            {EXTRA_ARGS_KEY: {"steering": wire(r.steering)}} if r.steering else None
        )
        states[r.rid] = SimpleNamespace(sampling_params=SimpleNamespace(extra_args=extra))
    ib = SimpleNamespace(
        num_reqs=len(reqs),
        req_ids=[r.rid for r in reqs],
        num_prompt_tokens=np.array([r.n_prompt for r in reqs]),
        num_computed_tokens_cpu=np.array([r.n_computed for r in reqs]),
    )
    return SimpleNamespace(input_batch=ib, query_start_loc=SimpleNamespace(np=qsl), requests=states)


def decoding_planner() -> StepPlanner:
    """A step planner for a stash without a steering runtime (no probes: gated decoding refused)."""
    return StepPlanner(L, decoding=True)
