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


def load_hf(model_path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """The HF model (``dtype``: float32 for exact parity with a float32 server; bfloat16 is ~4x
    faster on CPUs with AVX512-BF16 and matches a bfloat16 server) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype)
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
    """``[len(texts), num_layers, hidden]`` float32 activations at each text's last token.

    Texts that differ only in their last token (A/B items: the same question answered ``(A`` and
    ``(B``) share one forward pass of their common prefix; each last token then runs as a one-token
    step on that prefix's KV cache, which halves the cost of paired datasets.
    """
    ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(ids):
        groups.setdefault(tuple(x[:-1]), []).append(i)
    if len(groups) == len(texts) or any(len(x) < 2 for x in ids):  # nothing shared: one pass per text
        return _full_passes(model, tok, ids, batch_size, progress)
    return _shared_prefixes(model, tok, ids, groups, batch_size, progress)


class _Capture:
    """Forward hooks on every decoder layer; ``outputs`` holds the last call's layer outputs."""

    def __init__(self, model: Any) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._hook) for layer in decoder_layers(model)]

    def _hook(self, _m: Any, _a: Any, out: Any) -> None:
        self.outputs.append(out[0] if isinstance(out, tuple) else out)

    def run(self, model: Any, **inputs: Any) -> Any:
        self.outputs.clear()
        return getattr(model, "model", model)(**inputs)  # the decoder stack only: no LM head needed

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (right padding and causal attention: the padding never
    changes a text's own positions)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return input_ids, mask


def _pad_id(tok: Any) -> int:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad or 0)


def _full_passes(model: Any, tok: Any, ids: list[list[int]], batch_size: int, progress: bool) -> torch.Tensor:
    cap = _Capture(model)
    out = torch.empty(len(ids), len(cap.handles), model.config.hidden_size)
    try:
        # batches of similar length waste little on padding
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in tqdm(range(0, len(ids), batch_size), disable=not progress, desc="activations"):
            idx = order[start : start + batch_size]
            input_ids, mask = _pad([ids[i] for i in idx], _pad_id(tok))
            cap.run(model, input_ids=input_ids, attention_mask=mask)
            last = mask.sum(1) - 1
            rows, dest = torch.arange(len(idx)), torch.tensor(idx)
            for k, h in enumerate(cap.outputs):
                out[dest, k] = h[rows, last].float()
    finally:
        cap.close()
    return out


def _shared_prefixes(model: Any, tok: Any, ids: list[list[int]], groups: dict[tuple[int, ...], list[int]],
                     batch_size: int, progress: bool) -> torch.Tensor:
    cap = _Capture(model)
    out = torch.empty(len(ids), len(cap.handles), model.config.hidden_size)
    prefixes = sorted(groups, key=len)
    try:
        for start in tqdm(range(0, len(prefixes), batch_size), disable=not progress, desc="activations (shared prefixes)"):
            batch = prefixes[start : start + batch_size]
            input_ids, mask = _pad(batch, _pad_id(tok))
            cache = cap.run(model, input_ids=input_ids, attention_mask=mask, use_cache=True).past_key_values
            # one row per text: its prefix's cache row, then its own last token at position len(prefix)
            members = [(b, i) for b, pre in enumerate(batch) for i in groups[pre]]
            rows = torch.tensor([b for b, _ in members])
            cache.batch_select_indices(rows)
            last = torch.tensor([[ids[i][-1]] for _, i in members])
            lengths = torch.tensor([len(batch[b]) for b, _ in members])
            cap.run(model, input_ids=last, attention_mask=torch.cat([mask[rows], torch.ones(len(members), 1,
                    dtype=torch.long)], 1), position_ids=lengths[:, None], past_key_values=cache, use_cache=True)
            dest = torch.tensor([i for _, i in members])
            for k, h in enumerate(cap.outputs):
                out[dest, k] = h[:, -1].float()
    finally:
        cap.close()
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
    if hasattr(model, "last_token"):  # probes.remote.ServerExtractor: through a running server
        acts = model.last_token(tok, texts, batch_size)
    else:
        acts = last_token_activations(model, tok, texts, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"acts": acts.contiguous()}, str(tmp))
    tmp.replace(path)
    return acts


@torch.inference_mode()
def last_token_head_inputs(model: Any, tok: Any, texts: Sequence[str], batch_size: int = 16,
                           progress: bool = True) -> torch.Tensor:
    """``[len(texts), num_layers, num_heads * head_dim]`` float32: each decoder layer's attention
    output before the output projection (``self_attn.o_proj``'s input, the ``attn_heads`` steering
    site; head ``h`` in columns ``h * head_dim ..``) at each text's last token, read with forward
    pre-hooks; one padded pass per batch."""
    projs = [layer.self_attn.o_proj for layer in decoder_layers(model)]
    seen: list[torch.Tensor] = []
    handles = [p.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for p in projs]
    ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    out = torch.empty(len(ids), len(projs), int(projs[0].in_features))
    try:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in tqdm(range(0, len(ids), batch_size), disable=not progress, desc="head activations"):
            idx = order[start : start + batch_size]
            input_ids, mask = _pad([ids[i] for i in idx], _pad_id(tok))
            seen.clear()
            getattr(model, "model", model)(input_ids=input_ids, attention_mask=mask)
            last, rows, dest = mask.sum(1) - 1, torch.arange(len(idx)), torch.tensor(idx)
            for k, h in enumerate(seen):
                out[dest, k] = h[rows, last].float()
    finally:
        for hd in handles:
            hd.remove()
    return out
