"""The readable reference (tests/support/dola_reference.py) and ``steering.decoding.contrastive`` applied to the same
HF forward agree token for token on the default model (HF transformers only, no vLLM engine).

HF transformers >= 4.56 no longer has ``generate(dola_layers=...)`` (moved to the Hub, unavailable
offline); the unit tests check ``steering.decoding.contrastive`` against HF 4.55's DoLa step instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from steering.decoding.contrastive import apply_contrast
from steering.decoding.spec import ResolvedDecoding, parse_decoding, resolve_decoding
from tests.support import dola_reference
from tests.support.dola_reference import PROMPTS

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def hf() -> Iterator[tuple[Any, Any]]:
    from probes.extract import load_hf
    from steering.models import resolve_model

    torch.set_num_threads(1)
    model, tok = load_hf(resolve_model(None))
    yield model, tok


def _cfg(model: Any, raw: dict[str, Any]) -> ResolvedDecoding:
    return resolve_decoding(
        parse_decoding(raw),
        model.config.num_hidden_layers,
        tie_word_embeddings=bool(model.config.tie_word_embeddings),
    )


@torch.inference_mode()
def _adapter_generate(model: Any, prompt_ids: list[int], cfg: ResolvedDecoding, eos: int | None) -> list[int]:
    """What the vLLM path does per step: final logits, the LM head after the final norm on the
    premature layers' hidden states at the sampled position, then ``apply_contrast``."""
    head, norm = model.get_output_embeddings(), model.model.norm
    ids, past, feed, out_ids = list(prompt_ids), None, torch.tensor([prompt_ids]), []
    for _ in range(NEW_TOKENS):
        out = model(input_ids=feed, past_key_values=past, use_cache=True, output_hidden_states=True)
        past = out.past_key_values
        final = out.logits[:, -1].float()
        premature = {k: head(norm(out.hidden_states[k][:, -1])).float() for k in cfg.layers}
        token = int(apply_contrast(final, premature, [cfg], [ids])[0].argmax())
        out_ids.append(token)
        ids.append(token)
        if token == eos:
            break
        feed = torch.tensor([[token]])
    return out_ids


def _reference(model: Any, prompt_ids: list[int], cfg: ResolvedDecoding, eos: int | None) -> list[int]:
    steps = dola_reference.generate(
        model,
        prompt_ids,
        method=cfg.method,
        layers=cfg.layers,
        weights=cfg.weights,
        alpha=cfg.alpha,
        entropy_threshold=cfg.entropy_threshold,
        repetition_penalty=cfg.repetition_penalty,
        max_new_tokens=NEW_TOKENS,
        eos_token_id=eos,
    )
    return [s.token for s in steps]


@torch.inference_mode()
def _greedy(model: Any, prompt_ids: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    return [int(t) for t in out[0, len(prompt_ids) :]]


def test_dola_high_reference_equals_pure_functions(hf: tuple[Any, Any]) -> None:
    model, tok = hf
    cfg = _cfg(model, {"method": "dola", "premature_layers": "high"})
    assert cfg.layers == (15, 17, 19, 21, 23, 25, 27, 29)
    changed = 0
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        ref = _reference(model, ids, cfg, tok.eos_token_id)
        assert _adapter_generate(model, ids, cfg, tok.eos_token_id) == ref, prompt
        changed += ref != _greedy(model, ids)[: len(ref)]
    assert changed >= len(PROMPTS) // 2, "DoLa should change most greedy continuations"


@pytest.mark.parametrize(
    "raw",
    [
        {"method": "dola", "premature_layers": "low", "repetition_penalty": 1.2},
        {"method": "contrast", "premature_layers": [8]},
        {"method": "contrast", "premature_layers": [4, 10, 16], "weights": [1, 2, 1], "alpha": 0.2},
        {"method": "dola", "premature_layers": [2, 16], "entropy_threshold": 2.0},
    ],
)
def test_other_methods_reference_equals_pure_functions(hf: tuple[Any, Any], raw: dict[str, Any]) -> None:
    model, tok = hf
    cfg = _cfg(model, raw)
    for prompt in PROMPTS[:2]:
        ids = tok(prompt).input_ids
        assert _adapter_generate(model, ids, cfg, tok.eos_token_id) == _reference(model, ids, cfg, tok.eos_token_id), prompt
