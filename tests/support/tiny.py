"""Tiny random bundles and models for fast unit tests."""

from __future__ import annotations

from pathlib import Path

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


TINY_WORDS = ["paris", "rome", "lima", "is", "in", "france", "italy", "peru", "not"]


def make_tiny_llama(folder: Path) -> Path:
    """A word-level tokenizer over :data:`TINY_WORDS` and a 3-layer random Llama, saved in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *TINY_WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]").save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder
