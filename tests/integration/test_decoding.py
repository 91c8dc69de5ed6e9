"""Contrastive decoding (``decoding``) in the real engine: parity with the HF reference, isolation.

Greedy tokens from vLLM (stash op + logits processor, compiled mode) must equal
``tests/support/dola_reference.py`` run over the HF model, which shares no code with the vLLM path.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from steering.request import DECODING, EXTRA_ARGS_KEY
from tests.support import dola_reference
from tests.support.dola_reference import PROMPTS
from tests.support.engine_outputs import assert_same_rows, sampling, signature

pytestmark = pytest.mark.engine
NEW_TOKENS = 16


def _ids(llm: Any, text: str) -> list[int]:
    return list(llm.llm.get_tokenizer()(text)["input_ids"])


def _vllm_tokens(llm: Any, prompts: list[str], decoding: Any, steering: Any = None) -> list[list[int]]:
    outs = llm.generate(
        [{"prompt_token_ids": _ids(llm, p)} for p in prompts],
        sampling(max_tokens=NEW_TOKENS, logprobs=None),
        steering=steering,
        decoding=decoding,
    )
    return [list(o.outputs[0].token_ids) for o in outs]


def _reference(llm: Any, hf_model: Any, prompt: str, raw: dict[str, Any]) -> list[int]:
    cfg = llm.resolve_decoding(raw)
    assert cfg is not None
    steps = dola_reference.generate(
        hf_model, _ids(llm, prompt), method=cfg.method, layers=cfg.layers, weights=cfg.weights, alpha=cfg.alpha,
        entropy_threshold=cfg.entropy_threshold, repetition_penalty=cfg.repetition_penalty,
        max_new_tokens=NEW_TOKENS, eos_token_id=None,
    )
    return [s.token for s in steps]


def test_greedy_dola_high_matches_the_hf_reference_on_ten_prompts(steered: Any, hf_model: Any) -> None:
    raw = {"method": "dola", "premature_layers": "high"}
    got = _vllm_tokens(steered, PROMPTS, raw)  # all ten in one batch
    plain = _vllm_tokens(steered, PROMPTS, None)
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        assert tokens == _reference(steered, hf_model, prompt, raw), prompt
    assert sum(a != b for a, b in zip(got, plain, strict=True)) >= 5  # DoLa really changed the outputs


@pytest.mark.parametrize(
    "raw",
    [
        {"method": "contrast", "premature_layers": [8]},
        {"method": "contrast", "premature_layers": [0, 10, 16], "weights": [1, 2, 1]},  # layer 0: embeddings
        {"method": "dola", "premature_layers": "low", "entropy_threshold": 2.5},
        {"method": "dola", "premature_layers": [4, 12, 20, 28], "alpha": 0.05, "repetition_penalty": 1.2},
    ],
    ids=["fixed", "fused", "gated", "penalty"],
)
def test_contrast_variants_match_the_hf_reference(steered: Any, hf_model: Any, raw: dict[str, Any]) -> None:
    prompts = PROMPTS[:3]
    (before,) = steered.llm.collective_rpc("truthsteer_decoding_stats")
    got = _vllm_tokens(steered, prompts, raw)
    (after,) = steered.llm.collective_rpc("truthsteer_decoding_stats")
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == _reference(steered, hf_model, prompt, raw), prompt
    assert after["sparse_path"] and after["contrasted_rows"] > before["contrasted_rows"]
    sparse = raw["method"] == "contrast"  # the fixed and fused contrasts take the sparse path, DoLa does not
    assert (after["sparse_rows"] > before["sparse_rows"]) == sparse


def test_entropy_gate_keeps_confident_steps_and_a_huge_threshold_is_plain(steered: Any) -> None:
    prompts = PROMPTS[:4]
    never = _vllm_tokens(steered, prompts, {"method": "dola", "entropy_threshold": 100.0})
    assert never == _vllm_tokens(steered, prompts, None)


DOLA = {"method": "dola", "premature_layers": "high"}
FUSED = {"method": "contrast", "premature_layers": [6, 12], "weights": [1, 3]}
TRUTH = [{"direction": "truth", "strength": 6.0}]


def test_mixed_batch_rows_equal_their_solo_runs(steered: Any) -> None:
    prompts = [f"Fact {i}: the most famous building in Paris is" for i in range(6)]
    decodings: list[Any] = [DOLA, None, None, DOLA, FUSED, {"method": "none"}]
    steerings: list[Any] = [None, None, TRUTH, TRUTH, None, TRUTH]
    params = sampling(max_tokens=NEW_TOKENS, logprobs=3)
    batch = steered.generate(prompts, params, steering=steerings, decoding=decodings)
    for p, dec, st, out in zip(prompts, decodings, steerings, batch, strict=True):
        (solo,) = steered.generate([p], params, steering=[st], decoding=[dec])
        assert_same_rows(out, solo, (dec, st))
    # the configs differ in effect: plain, steered, DoLa, DoLa + steering, fused
    assert len({tuple(o.outputs[0].token_ids) for o in batch[:5]}) == 5


def test_requests_without_decoding_are_bit_identical_to_plain_vllm(steered: Any, plain: Any) -> None:
    prompts = [f"Plain {i}: the longest river in Africa is" for i in range(3)]
    others = [f"DoLa {i}: the longest river in Africa is" for i in range(3)]
    mixed = steered.generate(prompts + others, sampling(), decoding=[None] * 3 + [DOLA] * 3)
    ref = plain.generate(prompts + others, sampling())
    for i in range(3):
        assert signature(mixed[i]) == signature(ref[i])
    assert any(signature(mixed[3 + i]) != signature(ref[3 + i]) for i in range(3))


def test_sampling_with_n_and_seed_is_reproducible(steered: Any) -> None:
    params = sampling(temperature=0.8, n=3, seed=7, max_tokens=8, logprobs=None)
    a = steered.generate(["Once upon a time"], params, decoding=DOLA)[0]
    b = steered.generate(["Once upon a time"], params, decoding=DOLA)[0]
    assert [list(c.token_ids) for c in a.outputs] == [list(c.token_ids) for c in b.outputs]
    assert len(a.outputs) == 3


def test_junk_decoding_from_raw_vllm_runs_plain(steered: Any) -> None:
    junk = sampling(extra_args={EXTRA_ARGS_KEY: {DECODING: {"method": "dola", "layers": [99]}}})
    p = "Robustness: the moon is a"
    bad_out, ok_out = steered.llm.generate([p, p], [junk, sampling()], use_tqdm=False)
    assert_same_rows(bad_out, ok_out)


def _probe_gate(llm: Any, below: float) -> Any:
    """The truth bundle's calibrated probe on HF hidden states, deciding like a window-1 gate."""
    import torch

    b = llm.bundles["truth"]
    meta = b.meta.probe
    w, cal = b.probe_weight.float(), meta.calibration

    def gate(hidden: Any) -> tuple[bool, float]:
        h = hidden[meta.layer + 1][0, -1].float()  # probe layer k reads the output of decoder layer k
        score = float(torch.sigmoid(cal.a * (h @ w + meta.bias) + cal.b))
        return score < below, score

    return gate


def test_probe_gated_dola_contrasts_exactly_the_flagged_steps_like_the_reference(steered: Any, hf_model: Any) -> None:
    """Each step is contrasted iff the truth probe at the decoded position (same pass) is below the
    threshold: vLLM's tokens equal the HF reference that gates on the same probe. Steps whose score
    lies within 3e-3 of the threshold (the two paths' float noise) disqualify their prompt."""
    prompts = PROMPTS[:6]
    cfg = steered.resolve_decoding(DOLA)
    assert cfg is not None
    first = [dola_reference.generate(hf_model, _ids(steered, p), method="dola", layers=cfg.layers, alpha=cfg.alpha,
                                     max_new_tokens=NEW_TOKENS, gate=_probe_gate(steered, 2.0)) for p in prompts]
    scores = sorted(s.gate_score for steps in first for s in steps if s.gate_score is not None)
    # the middle of the widest gap between the middle half's scores: fires on about half of the
    # steps, and as far from every score as the data allow (a threshold on a score is a near-tie)
    mid = scores[len(scores) // 4: 3 * len(scores) // 4 + 1]
    below = max((b - a, (a + b) / 2) for a, b in itertools.pairwise(mid))[1]
    gate = {"probe": "truth", "below": below}
    got = _vllm_tokens(steered, prompts, {**DOLA, "gate": gate})
    checked = fired = held = 0
    for prompt, tokens in zip(prompts, got, strict=True):
        ref = dola_reference.generate(hf_model, _ids(steered, prompt), method="dola", layers=cfg.layers,
                                      alpha=cfg.alpha, max_new_tokens=NEW_TOKENS, gate=_probe_gate(steered, below))
        if any(abs((s.gate_score or 0.0) - below) < 3e-3 for s in ref):
            continue
        assert tokens == [s.token for s in ref], prompt
        checked += 1
        fired += sum(s.contrasted for s in ref)
        held += sum(not s.contrasted for s in ref)
    assert checked >= 3 and fired > 0 and held > 0, (checked, fired, held, below, scores)
    never = _vllm_tokens(steered, prompts[:3], {**DOLA, "gate": {"probe": "truth", "below": -1.0}})
    always = _vllm_tokens(steered, prompts[:3], {**DOLA, "gate": {"probe": "truth", "above": -1.0}})
    assert never == _vllm_tokens(steered, prompts[:3], None)
    assert always == _vllm_tokens(steered, prompts[:3], DOLA)
