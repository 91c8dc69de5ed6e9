"""Echo scoring under ``decoding`` in the real engine: contrasted prompt logprobs (teacher-forced,
per position, as DoLa scores TruthfulQA answers) equal the HF reference
(``tests/support/dola_reference.score``, one HF forward with ``output_hidden_states``), plain echo stays
vLLM's, mixed batches and chunked prefill give every request its solo result."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import torch

from tests.support import dola_reference

pytestmark = pytest.mark.engine
TOL = 2e-3
TEXTS = [
    "Q: What happens if you eat watermelon seeds?\nA: The watermelon seeds pass through your digestive system.",
    "Q: What is the capital of Australia?\nA: The capital of Australia is Canberra.",
    "The first person to walk on the moon was Neil Armstrong, in 1969.",
]
DOLA = {"method": "dola", "premature_layers": "high"}
CONTRAST = {"method": "contrast", "premature_layers": [16]}
TOP = 3


def _ids(llm: Any, text: str) -> list[int]:
    return list(llm.llm.get_tokenizer()(text)["input_ids"])


def _echo(llm: Any, prompts: list[list[int]], decoding: Any, top: int = TOP, max_tokens: int = 1) -> list[Any]:
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=top, prompt_logprobs=top, ignore_eos=True)
    return list(llm.generate([{"prompt_token_ids": p} for p in prompts], sp, decoding=decoding))


def _prompt_table(out: Any) -> list[dict[int, float]]:
    """Per prompt position 1.. : {token id: logprob} (the prompt token and the top ones)."""
    return [{t: lp.logprob for t, lp in d.items()} for d in out.prompt_logprobs[1:]]


def _stats(llm: Any) -> dict[str, Any]:
    (s,) = llm.llm.collective_rpc("truthsteer_decoding_stats")
    assert isinstance(s, dict)
    return s


def _check_against_reference(llm: Any, hf_model: Any, ids: list[int], out: Any, raw: dict[str, Any]) -> float:
    cfg = llm.resolve_decoding(raw)
    ref = dola_reference.score(hf_model, ids, method=cfg.method, layers=cfg.layers, weights=cfg.weights,
                               alpha=cfg.alpha, entropy_threshold=cfg.entropy_threshold)
    worst = 0.0
    for t, got in enumerate(_prompt_table(out)):
        want = ref[t]
        target = ids[t + 1]
        assert set(got) >= {target}
        top_ids = torch.topk(want, TOP).indices.tolist()
        finite_top = [i for i in top_ids if math.isfinite(float(want[i]))]
        assert set(finite_top) <= set(got), (t, finite_top, got)
        for tok, lp in got.items():
            w = float(want[tok])
            if math.isinf(w) or math.isinf(lp):
                assert lp == w, (t, tok, lp, w)
            else:
                worst = max(worst, abs(lp - w))
                assert abs(lp - w) < TOL, (t, tok, lp, w)
    return worst


@pytest.mark.parametrize("raw", [DOLA, CONTRAST], ids=["dola-high", "contrast-16"])
def test_echo_prompt_logprobs_equal_the_hf_reference(steered: Any, plain: Any, hf_model: Any,
                                                     raw: dict[str, Any]) -> None:
    prompts = [_ids(steered, t) for t in TEXTS]
    before = _stats(steered)
    outs = _echo(steered, prompts, raw)
    after = _stats(steered)
    assert after["prompt_positions"] - before["prompt_positions"] == sum(len(p) - 1 for p in prompts)
    assert after["prompt_unsupported"] == 0
    worst = max(_check_against_reference(steered, hf_model, ids, o, raw) for ids, o in zip(prompts, outs, strict=True))
    print(f"{raw['method']}: worst |vLLM - HF| over finite prompt logprobs {worst:.2e}")
    # the contrast really changed the scores, and some prompt tokens fall outside the plausible set
    plain_outs = _echo(plain, prompts, None)
    assert any(_prompt_table(a) != _prompt_table(b) for a, b in zip(outs, plain_outs, strict=True))
    assert any(math.isinf(lp) for o in outs for row in _prompt_table(o) for lp in row.values())


def test_plain_echo_is_bit_identical_to_plain_vllm(steered: Any, plain: Any) -> None:
    prompts = [_ids(steered, t) for t in TEXTS]
    got, want = _echo(steered, prompts, None), _echo(plain, prompts, None)
    for a, b in zip(got, want, strict=True):
        assert [{t: (lp.logprob, lp.rank) for t, lp in d.items()} for d in a.prompt_logprobs[1:]] == \
               [{t: (lp.logprob, lp.rank) for t, lp in d.items()} for d in b.prompt_logprobs[1:]]
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)


def test_mixed_batch_echo_dola_plain_echo_and_generating_dola_equal_their_solo_runs(steered: Any) -> None:
    from vllm import SamplingParams

    echo = SamplingParams(temperature=0.0, max_tokens=1, logprobs=TOP, prompt_logprobs=TOP, ignore_eos=True)
    gen = SamplingParams(temperature=0.0, max_tokens=8, logprobs=TOP, ignore_eos=True)
    prompts = [_ids(steered, t) for t in TEXTS]
    jobs = [(prompts[0], echo, DOLA), (prompts[1], echo, None), (prompts[2], gen, DOLA), (prompts[1], echo, CONTRAST)]

    def run(items: list[tuple[list[int], Any, Any]]) -> list[Any]:
        reqs = [steered.build_request({"prompt_token_ids": p}, sp, None, decoding=d) for p, sp, d in items]
        return list(steered.llm.generate([r[0] for r in reqs], [r[1] for r in reqs], use_tqdm=False))

    together = run(jobs)
    for job, out in zip(jobs, together, strict=True):
        (solo,) = run([job])
        assert list(out.outputs[0].token_ids) == list(solo.outputs[0].token_ids)
        if job[1] is echo:
            a, b = _prompt_table(out), _prompt_table(solo)
            assert [sorted(r) for r in a] == [sorted(r) for r in b]
            for ra, rb in zip(a, b, strict=True):
                for t in ra:
                    assert ra[t] == rb[t] or abs(ra[t] - rb[t]) < 1e-5, (t, ra[t], rb[t])
        else:
            assert out.prompt_logprobs is None


def test_chunked_prefill_contrast_matches_the_reference(steered: Any, hf_model: Any) -> None:
    """Prompts of 1900 + 1900 + 400 tokens exceed one step's 4096-token budget: the last one is
    prefilled (and its prompt logprobs contrasted) in two chunks."""
    base = " ".join(TEXTS)
    text = " ".join([base] * 40)
    long = [_ids(steered, f"{i}. {text}")[:n] for i, n in enumerate((1900, 1900, 400))]
    assert [len(p) for p in long] == [1900, 1900, 400]
    before = _stats(steered)
    outs = _echo(steered, long, CONTRAST, top=1)
    after = _stats(steered)
    assert after["prompt_positions"] - before["prompt_positions"] == sum(len(p) - 1 for p in long)
    cfg = steered.resolve_decoding(CONTRAST)
    for ids, out, upto in ((long[2], outs[2], 399), (long[0], outs[0], 60)):
        ref = dola_reference.score(hf_model, ids[: upto + 1], method=cfg.method, layers=cfg.layers,
                                   weights=cfg.weights, alpha=cfg.alpha)
        for t, got in enumerate(_prompt_table(out)[:upto]):
            lp, w = got[ids[t + 1]], float(ref[t, ids[t + 1]])
            assert (lp == w) if math.isinf(w) or math.isinf(lp) else abs(lp - w) < TOL, (t, lp, w)


def test_echo_dola_cost_and_stash_memory(steered: Any) -> None:
    """Measured, not asserted tightly: the time of echo-DoLa vs plain echo, and the stash size."""
    prompts = [_ids(steered, t) for t in TEXTS]
    _echo(steered, prompts, None)
    times = {}
    for name, raw in (("plain", None), ("dola", DOLA), ("contrast", CONTRAST)):
        t0 = time.perf_counter()
        _echo(steered, prompts, raw)
        times[name] = time.perf_counter() - t0
    s = _stats(steered)
    info = steered.prepared.info
    sched = steered.llm.llm_engine.vllm_config.scheduler_config
    rows = sched.max_num_seqs + sched.max_num_batched_tokens
    assert s["prompt_rows"] == sched.max_num_batched_tokens
    assert s["stash_bytes"] == info.num_layers * rows * info.hidden_size * 4
    print(f"echo of {sum(map(len, prompts))} tokens: plain {times['plain']:.3f}s, DoLa high {times['dola']:.3f}s, "
          f"contrast {times['contrast']:.3f}s; stash {s['stash_bytes'] / 1e6:.1f} MB ({rows} rows)")
