"""Head-vector bundles and a vLLM-shaped toy model with attention ``o_proj`` (flattened tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from steering.bundle import BundleMetadata, DirectionBundle, LayerStats, ModelRef, Training
from steering.heads import HeadMeta, head_key
from steering.model_info import ModelInfo

NH, HD = 2, 4  # heads x head size of the toy model (hidden 8)


def make_head_bundle(name: str, info: ModelInfo, selected: Sequence[tuple[int, int]], num_heads: int = NH,
                     head_dim: int = HD, seed: int = 0, residual: Sequence[int] = (), strength: float = 2.0
                     ) -> DirectionBundle:
    """Random head vectors at the ``selected`` (layer, head) pairs (zeros elsewhere), and residual
    directions at the ``residual`` layers when given."""
    g = torch.Generator().manual_seed(seed)
    layers = sorted({layer for layer, _ in selected})
    heads = {k: torch.zeros(num_heads, head_dim) for k in layers}
    for layer, h in selected:
        heads[layer][h] = torch.randn(head_dim, generator=g)
    vecs = {k: torch.randn(info.hidden_size, generator=g) for k in residual}
    meta = BundleMetadata(
        name=name, kind="truth", model=ModelRef.of(info), layers=list(residual), recommended_layers=list(residual)[:2],
        recommended_strength=1.5, layer_stats={str(k): LayerStats(norm=float(v.norm())) for k, v in vecs.items()},
        training=Training(method="random"),
        heads=HeadMeta(num_heads=num_heads, head_dim=head_dim, layers=layers, selected=[tuple(s) for s in selected],
                       recommended_strength=strength, accuracy={head_key(*s): 0.75 for s in selected}),
    )
    return DirectionBundle(meta=meta, vectors=vecs, head_vectors=heads)


class OProj(nn.Module):
    """A row-parallel output projection: this rank's columns of the weight (``tp_rank`` /
    ``tp_size`` / ``input_size_per_partition`` as vLLM's ``RowParallelLinear`` has them). Keeps the
    last input it saw (what the head pre-hook produced)."""

    def __init__(self, weight: torch.Tensor, rank: int = 0, world: int = 1) -> None:
        super().__init__()
        cols = weight.shape[1] // world
        # stored [in, out]: ``x @ w`` rounds the same for any number of rows (``x @ w.t()`` does not)
        self.weight = nn.Parameter(weight[:, rank * cols:(rank + 1) * cols].t().contiguous())
        self.tp_rank, self.tp_size, self.input_size_per_partition = rank, world, cols
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return x @ self.weight  # partial sum of this rank (vLLM all-reduces across ranks)


class Attn(nn.Module):
    def __init__(self, h: int, seed: int, rank: int = 0, world: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.v = nn.Parameter(torch.randn(h, NH * HD, generator=g) / h**0.5)
        self.o_proj = OProj(torch.randn(h, NH * HD, generator=g) / h**0.5, rank, world)
        self.rank, self.world = rank, world

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = torch.tanh(x @ self.v)  # per token: rows never mix, like per-request attention
        cols = heads.shape[1] // self.world
        return self.o_proj(heads[:, self.rank * cols:(self.rank + 1) * cols])


class AttnLayer(nn.Module):
    """Returns (hidden, residual) like a vLLM decoder layer; ``self_attn.o_proj`` takes the heads."""

    def __init__(self, h: int, seed: int, rank: int = 0, world: int = 1) -> None:
        super().__init__()
        self.self_attn = Attn(h, seed, rank, world)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        stream = hidden if residual is None else hidden + residual
        return self.self_attn(stream), stream


class AttnModel(nn.Module):
    def __init__(self, h: int, num_layers: int, rank: int = 0, world: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([AttnLayer(h, i, rank, world) for i in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, r = x, None
        for layer in self.layers:
            h, r = layer(h, r)
        assert r is not None
        return h + r
