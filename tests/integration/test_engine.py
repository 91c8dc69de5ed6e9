"""The steering engine on the real default model, in vLLM's default compiled mode."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from steering.errors import SpecError
from steering.request import EXTRA_ARGS_KEY
from tests.support.engine_outputs import assert_same_rows, sampling, signature
from tests.support.reference import last_token_logprobs

pytestmark = pytest.mark.engine


TRUTH_ADD = [{"direction": "truth", "op": "add", "strength": 8.0}]


def test_engine_runs_compiled_and_steering_takes_effect(steered: Any) -> None:
    from vllm.config import CompilationMode

    cfg = steered.llm.llm_engine.vllm_config
    assert cfg.compilation_config.mode != CompilationMode.NONE
    assert not cfg.model_config.enforce_eager
    prompt = "The capital of France is"
    base, strong = steered.generate([prompt, prompt], sampling(), steering=[None, TRUTH_ADD])
    assert base.outputs[0].token_ids != strong.outputs[0].token_ids


def test_unsteered_requests_are_bit_identical_to_plain_vllm(steered: Any, plain: Any) -> None:
    unsteered = [f"Plain request {i}: the oldest city in Europe is" for i in range(4)]
    others = [f"Steered request {i}: the tallest mountain on Earth is" for i in range(4)]
    specs = [None] * 4 + [TRUTH_ADD, [{"direction": "sycophancy", "strength": -6.0}], TRUTH_ADD, None]
    mixed = steered.generate(unsteered + others, sampling(), steering=specs)
    ref = plain.generate(unsteered + others, sampling())
    for i in range(4):
        assert signature(mixed[i]) == signature(ref[i]), unsteered[i]
    # the steered rows really were steered
    assert any(signature(mixed[4 + i]) != signature(ref[4 + i]) for i in (0, 1, 2))


CONFIGS: list[Any] = [
    None,
    [{"direction": "truth", "strength": 6.0}],
    [{"direction": "truth", "strength": -6.0, "layers": {"start": 8, "end": 14}}],
    [{"direction": "sycophancy", "strength": 8.0, "positions": "prompt"}],
    [{"direction": "truth", "op": "ablate", "layers": [10, 11, 12, 13, 14, 15]}],
    [{"direction": "truth", "op": "clamp", "layers": [12, 13], "target": 40.0}],
    [{"direction": "sycophancy", "strength": 10.0, "positions": "generated", "layers": [5, 6, 7]}],
    [{"direction": "truth", "strength": 5.0}, {"direction": "sycophancy", "op": "ablate", "layers": [9, 10]}],
]


def test_eight_configs_in_one_batch_match_their_solo_runs(steered: Any) -> None:
    prompts = [f"Q{i}: Tell me one fact about the number {i + 3}." for i in range(8)]
    params = sampling(max_tokens=16, logprobs=None)
    batch = steered.generate(prompts, params, steering=CONFIGS)
    for p, spec, out in zip(prompts, CONFIGS, batch, strict=True):
        (solo,) = steered.generate([p], params, steering=[spec])
        assert list(out.outputs[0].token_ids) == list(solo.outputs[0].token_ids), spec
    assert len({tuple(o.outputs[0].token_ids) for o in batch}) > 4  # configs differ in effect


def _engine_logprobs(llm: Any, prompt: str, spec: Any) -> tuple[list[int], dict[int, float]]:
    (out,) = llm.generate([prompt], sampling(max_tokens=1, logprobs=20), steering=[spec])
    return list(out.prompt_token_ids), {t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items()}


PARITY = [
    None,
    [{"direction": "truth", "strength": 4.0}],
    [{"direction": "truth", "op": "ablate", "layers": {"start": 6, "end": 20}}],
    [{"direction": "sycophancy", "op": "clamp", "layers": [10, 11, 12]}],
    [{"direction": "truth", "strength": -3.0, "layers": [3, 9]}, {"direction": "truth", "op": "clamp", "layers": [9], "target": 5.0}],
]


@pytest.mark.parametrize("spec", PARITY, ids=["none", "add", "ablate", "clamp", "add+clamp"])
def test_steered_logprobs_match_hf_reference(steered: Any, hf_model: Any, spec: Any) -> None:
    prompt = "The city of Paris is located in"
    ids, got = _engine_logprobs(steered, prompt, spec)
    ref = last_token_logprobs(hf_model, ids, steered.resolve(spec), steered.bundles)
    toks = sorted(got)
    torch.testing.assert_close(torch.tensor([got[t] for t in toks]), ref[toks], rtol=0, atol=2e-3)
    if spec is not None:  # the tolerance is far below the effect being checked
        _, base = _engine_logprobs(steered, prompt, None)
        shared = [t for t in toks if t in base]
        effect = max((abs(got[t] - base[t]) for t in shared), default=math.inf)
        assert effect > 0.05


def test_strength_zero_is_bit_identical_and_add_subtract_cancels(steered: Any) -> None:
    p = "Identity check: water boils at"
    zero = [{"direction": "truth", "strength": 0.0, "layers": list(range(30))}]
    pm = [{"direction": "truth", "strength": 5.0}, {"direction": "truth", "strength": -5.0}]
    base, z, cancel = steered.generate([p, p, p], sampling(), steering=[None, zero, pm])
    assert signature(z) == signature(base)
    (bt, blp), (ct, clp) = signature(base)[0], signature(cancel)[0]
    assert ct == bt
    for a, b in zip(blp, clp, strict=True):
        assert a.keys() == b.keys()
        assert all(abs(a[t] - b[t]) < 1e-3 for t in a)


def test_ablate_leaves_zero_projection_at_the_layer(steered: Any, hf_model: Any) -> None:
    spec = [{"direction": "truth", "op": "ablate", "layers": [12]}]
    ids, _ = _engine_logprobs(steered, "Ablation check: the moon orbits", spec)
    cap: dict[int, torch.Tensor] = {}
    last_token_logprobs(hf_model, ids, steered.resolve(spec), steered.bundles, capture=cap)
    u = steered.bundles["truth"].unit(12)
    proj = cap[12] @ u
    assert proj.abs().max() < 1e-3 * cap[12].norm(dim=-1).max()


def test_kv_blocks_are_not_shared_across_steering_configs(steered: Any, hf_model: Any) -> None:
    prompt = " ".join(f"Fact {i}: the river number {i} flows into the sea." for i in range(25))
    spec = [{"direction": "truth", "strength": 6.0, "positions": "prompt"}]
    _engine_logprobs(steered, prompt, None)  # fills the prefix cache with unsteered blocks
    _engine_logprobs(steered, prompt, None)
    ids, got = _engine_logprobs(steered, prompt, spec)
    ref = last_token_logprobs(hf_model, ids, steered.resolve(spec), steered.bundles)
    toks = sorted(got)
    torch.testing.assert_close(torch.tensor([got[t] for t in toks]), ref[toks], rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ([{"direction": "honesty"}], "steering[0][0].direction"),
        ([{"direction": "truth", "layers": [30]}], "steering[0][0].layers"),
        ([{"direction": "truth", "strength": float("nan")}], "steering[0][0].strength"),
        ([{"direction": "truth", "strength": 1e6}], "steering[0][0].strength"),
    ],
)
def test_bad_specs_fail_at_entry_and_the_engine_keeps_serving(steered: Any, spec: Any, param: str) -> None:
    with pytest.raises(SpecError) as ei:
        steered.generate(["x"], sampling(max_tokens=2), steering=[spec])
    assert ei.value.param == param
    (out,) = steered.generate(["Still serving?"], sampling(max_tokens=2))
    assert len(out.outputs[0].token_ids) == 2


def test_junk_extra_args_from_raw_vllm_never_crash_the_engine(steered: Any) -> None:
    junk = sampling(extra_args={EXTRA_ARGS_KEY: {"steering": [{"direction": "nope", "layers": [99]}]}})
    good = sampling()
    p = "Robustness: the sun is a"
    bad_out, ok_out = steered.llm.generate([p, p], [junk, good], use_tqdm=False)
    assert_same_rows(bad_out, ok_out)
