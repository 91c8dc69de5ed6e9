"""Tiny random bundles and models for fast unit tests."""

from __future__ import annotations

import torch

from steering.bundle import (
    BundleMetadata,
    DirectionBundle,
    LayerStats,
    ModelRef,
    ProbeMeta,
    Training,
)
from steering.model_info import ModelInfo

INFO = ModelInfo(name="tiny", hidden_size=8, num_layers=4, architecture="LlamaForCausalLM", fingerprint="sha256:tiny")


def make_bundle(
    name: str = "truth",
    info: ModelInfo = INFO,
    layers: list[int] | None = None,
    seed: int = 0,
    probe: bool = True,
) -> DirectionBundle:
    g = torch.Generator().manual_seed(seed)
    layers = list(range(info.num_layers)) if layers is None else layers
    vecs = {k: torch.randn(info.hidden_size, generator=g) for k in layers}
    meta = BundleMetadata(
        name=name,
        kind="truth",
        model=ModelRef.of(info),
        layers=layers,
        recommended_layers=layers[:2],
        recommended_strength=2.0,
        layer_stats={str(k): LayerStats(norm=float(v.norm()), pos_mean=1.5, neg_mean=-0.5) for k, v in vecs.items()},
        probe=ProbeMeta(layer=layers[0], bias=0.1) if probe else None,
        training=Training(method="random"),
    )
    pw = torch.randn(info.hidden_size, generator=g) if probe else None
    return DirectionBundle(meta=meta, vectors=vecs, probe_weight=pw)
