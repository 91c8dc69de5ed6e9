"""The ITI-style head trainer on planted synthetic head activations, and its HF extraction."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from probes.extract import last_token_head_inputs
from probes.heads import fit_heads, mass_mean, to_bundle, top_heads
from probes.heads_cli import check, splits
from steering.bundle import DirectionBundle
from steering.model_info import ModelInfo

PLANTED = [(1, 2), (2, 0), (3, 3)]


def planted(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """Noise ``[n, 4 layers, 4 heads, 8]``; the planted heads move by ``strength * mu`` with the label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 4, 8))
    y = rng.integers(0, 2, n)
    mus = {}
    for j, (layer, h) in enumerate(PLANTED):
        mu = rng.normal(size=8)
        mus[layer, h] = mu / np.linalg.norm(mu)
        x[:, layer, h] += np.outer(y * (3.0 - 0.5 * j), mus[layer, h])
    return x, y, mus


def test_the_trainer_recovers_the_planted_heads_and_their_directions() -> None:
    x, y, mus = planted()
    groups = [f"g{i}" for i in range(len(y))]
    train, val, test = splits(groups, 0.2, 0.25, seed=0)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    auto = fit_heads(x, y, train, val, k=None, seed=0)
    n = len(auto.selected)  # K chosen on validation: the planted heads first, nothing else before them
    assert set(auto.selected[:min(n, 3)]) <= set(PLANTED) and n >= 2
    assert auto.k_scores[n] == max(auto.k_scores.values()) and auto.k_scores[n] > auto.k_scores[64 if 64 in
                                                                                                 auto.k_scores else 16]
    fit = fit_heads(x, y, train, val, k=3, seed=0)
    assert sorted(fit.selected) == PLANTED  # the top 3 by validation accuracy are the planted heads
    assert fit.accuracy[1, 2] > 0.85 and fit.accuracy[0, 0] < 0.65
    for lh in PLANTED:
        v = fit.vectors[lh]
        u, sigma = mass_mean(x[np.asarray(train), lh[0], lh[1]], y[np.asarray(train)])
        np.testing.assert_allclose(v, sigma * u, rtol=1e-6)
        assert float(u @ mus[lh]) > 0.9  # the mass-mean shift points along the plant
        np.testing.assert_allclose(np.linalg.norm(v), fit.sigma[lh], rtol=1e-5)
    assert top_heads(fit.accuracy, 3) == fit.selected


def test_the_bundle_holds_the_selected_heads_scaled_by_sigma() -> None:
    x, y, _ = planted(seed=1)
    fit = fit_heads(x, y, list(range(400)), list(range(400, 600)), k=3, seed=0)
    info = ModelInfo("tiny", 32, 4, fingerprint="sha256:t", num_heads=4, head_dim=8)
    b = to_bundle(fit, name="heads", info=info, strength=4.0, datasets=[], seed=0, metrics={"heads.k": 3.0})
    assert isinstance(b, DirectionBundle) and b.meta.layers == [] and b.meta.heads is not None
    assert sorted(b.meta.heads.selected) == PLANTED and b.meta.heads.recommended_strength == 4.0
    assert len(b.meta.heads.accuracy) == 16 and set(b.meta.heads.sigma) == {"1.2", "2.0", "3.3"}
    assert torch.equal(b.head_vectors[1][2], torch.from_numpy(fit.vectors[1, 2]))
    assert int(b.head_vectors[1].ne(0).any(1).sum()) == 1


def test_hf_extraction_reads_o_proj_inputs_at_the_last_token() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.fakes import FakeTokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).eval()
    tok = FakeTokenizer()
    tok.pad_token_id, tok.eos_token_id = 0, 0  # type: ignore[attr-defined]
    texts = ["abc", "hello there", "x"]
    got = last_token_head_inputs(model, tok, texts, batch_size=2, progress=False)
    assert got.shape == (3, 2, 16)
    for i, t in enumerate(texts):  # each text alone, unpadded
        seen: list[torch.Tensor] = []
        hs = [layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a, seen=seen: seen.append(a[0]))
              for layer in model.model.layers]
        with torch.inference_mode():
            model.model(input_ids=torch.tensor([tok(t)["input_ids"]]))
        for h in hs:
            h.remove()
        torch.testing.assert_close(got[i], torch.stack([s[0, -1] for s in seen]), rtol=1e-5, atol=1e-5)


def test_a_truthfulqa_fold_without_the_truthfulqa_domain_is_refused() -> None:
    with pytest.raises(SystemExit, match="--truthfulqa-fold 2: needs the truthfulqa domain"):
        check(argparse.Namespace(truthfulqa_fold=2, domains="cities,mmlu"))
    check(argparse.Namespace(truthfulqa_fold=1, domains="cities,truthfulqa"))
    check(argparse.Namespace(truthfulqa_fold=None, domains="cities"))
