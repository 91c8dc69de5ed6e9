"""Residual-stream activations at the last token of each text, for every decoder layer.

Layer ``k`` is the output of decoder layer ``k`` (the full residual stream, as HF returns it and as
the vLLM hook sees it as ``hidden + residual``), read with forward hooks in float32, so the
activations are the ones the server steers and probes. Results are cached on disk by
(model fingerprint, dataset digest).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from steering.models import cache_dir


def load_hf(model_path: str | Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.eval()
    return model, tok


def decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", model)
    inner = getattr(inner, "language_model", inner)
    return inner.layers


@torch.inference_mode()
def last_token_activations(
    model: Any, tok: Any, texts: Sequence[str], batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    """``[len(texts), num_layers, hidden]`` float32 activations at each text's last token."""
    layers = decoder_layers(model)
    captured: list[torch.Tensor] = []

    def hook(_m: Any, _a: Any, out: Any) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    out = torch.empty(len(texts), len(layers), model.config.hidden_size)
    old_side = tok.padding_side
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:
        # batches of similar length waste little on padding (right padding and causal attention:
        # the padding never changes a text's own positions)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="activations"):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            captured.clear()
            getattr(model, "model", model)(**enc)  # the decoder stack only: no LM head needed
            last = enc["attention_mask"].sum(1) - 1
            rows = torch.arange(len(idx))
            dest = torch.tensor(idx)
            for k, h in enumerate(captured):
                out[dest, k] = h[rows, last].float()
    finally:
        tok.padding_side = old_side
        for h in handles:
            h.remove()
    return out


def activation_path(fingerprint: str, digest: str) -> Path:
    return cache_dir() / "activations" / f"{fingerprint.replace(':', '-')[:40]}-{digest}.safetensors"


def cached_activations(
    model: Any, tok: Any, texts: Sequence[str], fingerprint: str, digest: str, batch_size: int = 16
) -> torch.Tensor:
    path = activation_path(fingerprint, digest)
    if path.is_file():
        acts: torch.Tensor = load_file(str(path))["acts"]
        return acts
    acts = last_token_activations(model, tok, texts, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"acts": acts.contiguous()}, str(tmp))
    tmp.replace(path)
    return acts
