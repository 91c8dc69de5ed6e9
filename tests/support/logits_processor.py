"""Batch set-ups for the worker side of contrastive decoding on the vLLM-shaped toy model: requests
with a decoding config, HF-style hidden states of the toy model, and a logits processor attached to
a fake stash (the stash and processor tests share them)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from steering.decoding.logits_processor import ContrastiveLogitsProcessor
from steering.decoding.spec import ResolvedDecoding
from steering.request import DECODING, EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, wire
from tests.support.toy import H, L, Req, ToyModel

V = 11
DOLA = ResolvedDecoding("dola", (1, 3), alpha=0.2)


def decoding_req(rid: str, n_prompt: int, n_computed: int, n_sched: int, cfg: ResolvedDecoding | None,
                 steering: list[ResolvedOp] | None = None) -> Req:
    extra: dict[str, Any] = {}
    if cfg is not None:
        extra[DECODING] = cfg.to_wire()
    if steering:
        extra["steering"] = wire(steering)
    return Req(rid, n_prompt, n_computed, n_sched, extra={EXTRA_ARGS_KEY: extra} if extra else None)


def toy_streams(x: torch.Tensor, add_at: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """HF-style hidden states of the toy model: [embeddings, output of layer 0, ..., layer L-1]."""
    model = ToyModel()
    out = [x]
    h, r = x, None
    for k, layer in enumerate(model.layers):
        h, r = layer(h, r)
        if add_at and k in add_at:
            h = h + add_at[k]
        out.append(h + r)
    return out


class FakeStash:
    """What the processor reads from a :class:`HiddenStash`: configs per row, stashed states."""

    def __init__(self, configs: list[ResolvedDecoding | None], hidden: dict[int, torch.Tensor]) -> None:
        self.step_configs = configs
        self.outs = hidden

    def hidden(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        return self.outs[layer].index_select(0, rows)


def processor() -> ContrastiveLogitsProcessor:
    cfg = SimpleNamespace(model_config=SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=L)))
    return ContrastiveLogitsProcessor(cfg, torch.device("cpu"), False)  # type: ignore[arg-type]


def setup_step(rows: int = 5) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(rows, V, generator=g) * 3
    hidden = {k: torch.randn(rows, H, generator=g) for k in range(L)}
    w = torch.randn(V, H, generator=g)
    scale = torch.rand(H, generator=g) + 0.5
    return logits, hidden, w, scale


def norm_fn(scale: torch.Tensor) -> Any:
    return lambda h: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def attach(lp: ContrastiveLogitsProcessor, configs: list[ResolvedDecoding | None], hidden: dict[int, torch.Tensor],
           w: torch.Tensor, scale: torch.Tensor, sparse: bool = False) -> None:
    token_head = (lambda h, t: (h * w[t]).sum(-1)) if sparse else None
    lp.attach(FakeStash(configs, hidden), norm_fn(scale), lambda h: h @ w.t(), token_head)  # type: ignore[arg-type]
