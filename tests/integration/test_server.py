"""The real server in a subprocess, driven by the official ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.serve import running_server, served_probes

pytestmark = pytest.mark.engine
API_KEY = "sk-test-truthsteer"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server({"TRUTHSTEER_API_KEYS": f'["{API_KEY}"]', "TRUTHSTEER_SERVED_MODEL_NAME": "smollm2"}) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


def test_models_and_directions(client: Any, server: str) -> None:
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    r = httpx.get(f"{server}/v1/directions", headers={"Authorization": f"Bearer {API_KEY}"})
    names = {d["name"] for d in r.json()["data"]}
    assert {"truth", "sycophancy"} <= names


def test_chat_steering_changes_greedy_output_and_strength_zero_does_not(client: Any) -> None:
    msgs = [{"role": "user", "content": "Where is the city of Lyon?"}]
    kw: dict[str, Any] = {"model": "smollm2", "messages": msgs, "max_tokens": 16, "temperature": 0}
    base = client.chat.completions.create(**kw)
    zero = client.chat.completions.create(**kw, extra_body={"steering": [{"direction": "truth", "strength": 0}]})
    strong = client.chat.completions.create(**kw, extra_body={"steering": [{"direction": "truth", "strength": 12}]})
    assert zero.choices[0].message.content == base.choices[0].message.content
    assert strong.choices[0].message.content != base.choices[0].message.content
    assert base.usage.completion_tokens == 16 or base.choices[0].finish_reason == "stop"


def test_completions_stream_n_stop_logprobs(client: Any) -> None:
    kw: dict[str, Any] = {"model": "smollm2", "prompt": "Counting: one, two,", "max_tokens": 8, "temperature": 0}
    full = client.completions.create(**kw, logprobs=2)
    assert full.choices[0].logprobs is not None and len(full.choices[0].logprobs.tokens) == full.usage.completion_tokens
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    many = client.completions.create(**{**kw, "temperature": 0.8, "seed": 1}, n=3)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    stopped = client.completions.create(**kw, stop=[","])
    assert "," not in stopped.choices[0].text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"steering": [{"direction": "honesty"}]}, "steering[0].direction"),
        ({"steering": [{"direction": "truth", "layers": [99]}]}, "steering[0].layers"),
        ({"steering": [{"direction": "truth", "strength": 1e9}]}, "steering[0].strength"),
        ({"decoding": {"method": "dola", "premature_layers": [30]}}, "decoding.premature_layers"),
        ({"echo": True, "logprobs": 0, "decoding": {"method": "dola", "repetition_penalty": 1.2}},
         "decoding.repetition_penalty"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"n": 1000}, "n"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_input_is_a_4xx_in_openai_shape(server: str, body: dict[str, Any], param: str) -> None:
    payload = {"model": "smollm2", "prompt": "x", "max_tokens": 2, **body}
    r = httpx.post(f"{server}/v1/completions", json=payload, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert httpx.get(f"{server}/health").status_code == 200


def test_auth_and_unknown_model(server: str, client: Any) -> None:
    import openai

    r = httpx.get(f"{server}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    r = httpx.post(f"{server}/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {API_KEY}",
                                                                           "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_chat_logprobs_carry_top_k_per_token(client: Any) -> None:
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for tok in content:
        assert len(tok.top_logprobs) == 3
        assert tok.top_logprobs[0].token == tok.token  # greedy: the sampled token is the most likely


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def test_probe_scores_one_per_generated_token_and_equal_to_the_hf_probe(client: Any, server: str) -> None:
    """Scores come from the same forward pass; they equal the bundle's probe on HF activations."""
    import torch

    from probes.extract import load_hf
    from steering.bundle import load_directory
    from steering.engine import DEFAULT_DIRECTIONS
    from steering.models import resolve_model
    from steering.vllm.probe_readout import folded_probe

    r = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=12, temperature=0,
                                  extra_body={"probes": ["truth", "sycophancy"]})
    ps = r.choices[0].model_extra["probe_scores"]
    n = r.usage.completion_tokens
    for name in ("truth", "sycophancy"):
        tokens = ps[name]["tokens"]
        assert len(tokens) == n and all(0.0 <= t <= 1.0 for t in tokens)
        assert ps[name]["mean"] == pytest.approx(sum(tokens) / n) and ps[name]["last"] == tokens[-1]
    # HF reference: the stream after the probe layer at the positions that sampled each token
    path = resolve_model(None)
    model, tok = load_hf(path)
    ids = tok("The capital of France is")["input_ids"]
    gen = tok(r.choices[0].text, add_special_tokens=False)["input_ids"]
    if len(gen) != n:  # re-tokenisation of the text differs: compare the prompt-side position only
        gen = gen[:0]
    bundles = load_directory(DEFAULT_DIRECTIONS)
    with torch.inference_mode():
        hs = model(torch.tensor([ids + gen]), output_hidden_states=True).hidden_states
    for name in ("truth", "sycophancy"):
        b = bundles[name]
        assert b.meta.probe is not None
        w, bias = folded_probe(b)
        stream = hs[b.meta.probe.layer + 1][0]  # hidden_states[k + 1] = output of decoder layer k
        k = max(1, len(gen))
        want = torch.sigmoid(stream[len(ids) - 1 : len(ids) - 1 + k] @ w + bias).tolist()
        assert ps[name]["tokens"][:k] == pytest.approx(want, abs=2e-3)


def test_stream_with_probe_scores_and_final_summary(client: Any) -> None:
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Count to five."}], max_tokens=10, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"probes": ["truth"]},
    )
    per_token: list[float] = []
    summary = None
    usage = None
    for ch in stream:
        usage = ch.usage or usage
        for c in ch.choices:
            per_token += c.model_extra["probe_scores"]["truth"]
            summary = c.model_extra.get("probe_summary") or summary
    assert usage is not None and len(per_token) == usage.completion_tokens
    assert summary is not None and summary["truth"]["tokens"] == per_token


def test_probe_score_endpoint_separates_true_from_false(server: str) -> None:
    pairs = [("Paris", "France", "Japan"), ("Tokyo", "Japan", "Brazil"), ("Berlin", "Germany", "Egypt"),
             ("Madrid", "Spain", "China"), ("Rome", "Italy", "Canada"), ("Cairo", "Egypt", "Norway")]
    true = [f"The city of {c} is in {t}." for c, t, _ in pairs]  # the training statements' form
    false = [f"The city of {c} is in {f}." for c, _, f in pairs]
    r = httpx.post(f"{server}/v1/probes/score", json={"model": "smollm2", "input": true + false, "probes": ["truth"]},
                   headers=_auth(), timeout=300)
    assert r.status_code == 200, r.text
    s = [d["scores"]["truth"] for d in r.json()["data"]]
    assert all(0 <= x <= 1 for x in s)
    assert sum(s[:6]) / 6 > sum(s[6:]) / 6 + 0.05
    mean = httpx.post(f"{server}/v1/probes/score", json={"model": "smollm2", "input": true[:2], "reduce": "mean"},
                      headers=_auth(), timeout=300).json()
    with_probe = served_probes(server, API_KEY)
    assert {"truth", "sycophancy"} <= with_probe
    assert set(mean["data"][0]["scores"]) == with_probe  # no `probes`: every served probe
    bad = httpx.post(f"{server}/v1/probes/score", json={"model": "smollm2", "input": "x", "probes": ["nope"]},
                     headers=_auth())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "probes[0]"


def test_extracted_activations_give_the_servers_probe_scores(server: str) -> None:
    """``probes/`` trains on the activations the server scores: the extractor (shared-prefix path for
    A/B items, one pass for the rest) through the bundle's probe equals ``/v1/probes/score``."""
    import torch

    from probes import sources
    from probes.extract import last_token_activations, load_hf
    from steering.bundle import load_directory
    from steering.engine import DEFAULT_DIRECTIONS
    from steering.models import resolve_model
    from steering.vllm.probe_readout import folded_probe

    model, tok = load_hf(resolve_model(None))
    items = sources.builtin("caa_sycophancy_test", tok).texts()[:4]  # two items, (A and (B each
    texts = [*items, "The city of Paris is in France."]
    r = httpx.post(f"{server}/v1/probes/score", json={"model": "smollm2", "input": texts}, headers=_auth(), timeout=300)
    assert r.status_code == 200, r.text
    got = r.json()["data"]
    bundles = load_directory(DEFAULT_DIRECTIONS)
    for name in ("truth", "sycophancy"):
        b = bundles[name]
        assert b.meta.probe is not None
        frame = b.meta.probe.frame  # a probe trained inside a frame is scored inside it
        framed = [frame.apply(t, tok) for t in texts] if frame is not None else texts
        acts = last_token_activations(model, tok, framed, batch_size=2, progress=False)
        w, bias = folded_probe(b)
        want = torch.sigmoid(acts[:, b.meta.probe.layer] @ w + bias).tolist()
        assert [d["scores"][name] for d in got] == pytest.approx(want, abs=2e-3), name


def test_32_concurrent_mixed_requests_equal_their_solo_runs(server: str) -> None:
    """Steered, unsteered, probed and streamed greedy requests in one batch: nothing leaks."""
    import asyncio

    prompts = ["Name a fruit.", "Where is Lyon?", "Say something kind.", "What is 2+2?"]

    def body(i: int) -> dict[str, Any]:
        b: dict[str, Any] = {"model": "smollm2", "messages": [{"role": "user", "content": prompts[i % 4]}],
                             "max_tokens": 12, "temperature": 0}
        if i % 4 in (1, 3):
            b["steering"] = [{"direction": "truth", "strength": 2.0 + 2 * (i % 3)}]
        if i % 3 == 0:
            b["probes"] = ["truth"]
        if i % 5 == 0:
            b["stream"] = True
        return b

    async def one(c: httpx.AsyncClient, i: int) -> tuple[str, list[float] | None]:
        b = body(i)
        if b.get("stream"):
            text, scores = "", []
            async with c.stream("POST", f"{server}/v1/chat/completions", json=b, headers=_auth()) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        for ch in json.loads(line[6:])["choices"]:
                            text += ch["delta"].get("content") or ""
                            scores += ch.get("probe_scores", {}).get("truth", [])
            return text, (scores or None)
        r = await c.post(f"{server}/v1/chat/completions", json=b, headers=_auth())
        ch = r.json()["choices"][0]
        return ch["message"]["content"], (ch.get("probe_scores") or {}).get("truth", {}).get("tokens")

    async def run(idx: list[int]) -> list[tuple[str, list[float] | None]]:
        async with httpx.AsyncClient(timeout=600) as c:
            return await asyncio.gather(*[one(c, i) for i in idx])

    together = asyncio.run(run(list(range(32))))
    solo = [asyncio.run(run([i]))[0] for i in range(12)]  # the configuration of i depends on i % 12 only
    for i in range(32):
        text, scores = solo[i % 12]
        assert together[i][0] == text, i
        if scores is not None:
            assert together[i][1] == pytest.approx(scores, abs=1e-4), i


def test_metrics_after_traffic(server: str) -> None:
    text = httpx.get(f"{server}/metrics").text
    for needle in ('truthsteer_requests_total{endpoint="chat",status="200"}', "truthsteer_probe_score_count",
                   'truthsteer_steering_ops_total{direction="truth",op="add"}', "truthsteer_kv_cache_usage_ratio",
                   "truthsteer_time_to_first_token_seconds_bucket"):
        assert needle in text, needle
    served = [ln for ln in text.splitlines() if ln.startswith('truthsteer_requests_total{endpoint="chat",status="200"}')]
    assert float(served[0].split()[-1]) >= 10


def test_probe_gated_steering_and_abstention(client: Any) -> None:
    msgs = [{"role": "user", "content": "Where is the city of Lyon?"}]
    kw: dict[str, Any] = {"model": "smollm2", "messages": msgs, "max_tokens": 16, "temperature": 0}

    def text(**extra: Any) -> tuple[str, Any]:
        r = client.chat.completions.create(**kw, extra_body=extra)
        r.choices[0].n_tokens = r.usage.completion_tokens
        return r.choices[0].message.content, r.choices[0]

    base, _ = text()
    ungated, _ = text(steering=[{"direction": "truth", "strength": 12}])
    never, ch = text(steering=[{"direction": "truth", "strength": 12, "gate": {"probe": "truth", "below": -1.0}}])
    assert never == base and ch.model_extra["interventions"]["steered_tokens"] == 0
    always, ch = text(steering=[{"direction": "truth", "strength": 12,
                                 "gate": {"probe": "truth", "below": 2.0, "initial": "open"}}])
    assert always == ungated != base
    assert ch.model_extra["interventions"]["steered_tokens"] == ch.n_tokens  # open throughout
    abstained, ch = text(abstain={"probe": "truth", "below": 2.0, "message": "Not sure.", "return_original": True})
    assert abstained == "Not sure." and ch.finish_reason == "abstained" and ch.model_extra["abstain"]["original"] == base
    kept, ch = text(abstain={"probe": "truth", "below": -1.0})
    assert kept == base and ch.finish_reason != "abstained"


def test_probe_gated_dola_through_the_server(client: Any) -> None:
    msgs = [{"role": "user", "content": "Where is the city of Lyon?"}]
    kw: dict[str, Any] = {"model": "smollm2", "messages": msgs, "max_tokens": 16, "temperature": 0}
    dola = {"method": "dola", "premature_layers": "high"}

    def run(**extra: Any) -> tuple[str, Any, int]:
        r = client.chat.completions.create(**kw, extra_body=extra)
        return r.choices[0].message.content, r.choices[0].model_extra.get("interventions"), r.usage.completion_tokens

    base, _, _ = run()
    ungated, iv, n = run(decoding=dola)
    assert ungated != base and iv["contrasted_tokens"] == n
    never, iv, _ = run(decoding={**dola, "gate": {"probe": "truth", "below": -1.0}})
    assert never == base and iv["contrasted_tokens"] == 0
    always, iv, n = run(decoding={**dola, "gate": {"probe": "truth", "above": -1.0}}, probes=["truth"])
    assert always == ungated and iv["contrasted_tokens"] == n


def test_dola_through_the_server_with_steering_probes_and_streaming(client: Any) -> None:
    from tests.support.dola_reference import PROMPTS

    kw: dict[str, Any] = {"model": "smollm2", "prompt": PROMPTS, "max_tokens": 16, "temperature": 0}
    plain = client.completions.create(**kw)
    dola = client.completions.create(**kw, extra_body={"decoding": {"method": "dola", "premature_layers": "high"}})
    texts = {c.index: c.text for c in plain.choices}
    assert sum(c.text != texts[c.index] for c in dola.choices) >= 5
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Who wrote the Odyssey?"}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"decoding": {"method": "contrast", "premature_layers": [4, 10, 16], "weights": [1, 2, 1],
                                 "entropy_threshold": 1.0},
                    "steering": [{"direction": "truth", "strength": 4.0}], "probes": ["truth"]},
    )
    text, per_token, usage = "", [], None
    for ch in stream:
        usage = ch.usage or usage
        for c in ch.choices:
            text += c.delta.content or ""
            per_token += c.model_extra["probe_scores"]["truth"]
    assert usage is not None and text and len(per_token) == usage.completion_tokens
    assert all(0.0 <= x <= 1.0 for x in per_token)  # calibrated probabilities (may saturate under steering)


def test_echo_scoring_under_dola_returns_contrasted_prompt_logprobs(client: Any) -> None:
    prompt = "Q: What is the capital of Australia?\nA: The capital of Australia is Canberra."
    kw: dict[str, Any] = {"model": "smollm2", "prompt": [prompt, prompt + " Yes."], "max_tokens": 1,
                          "temperature": 0, "echo": True, "logprobs": 2}
    plain = client.completions.create(**kw)
    dola = client.completions.create(**kw, extra_body={"decoding": {"method": "dola", "premature_layers": "high"}})
    for p, d in zip(sorted(plain.choices, key=lambda c: c.index), sorted(dola.choices, key=lambda c: c.index),
                    strict=True):
        lp, ld = p.logprobs, d.logprobs
        n = len(ld.tokens) - 1  # the last entry is the generated token
        assert ld.tokens[:n] == lp.tokens[:n] and ld.token_logprobs[0] is None
        vals = ld.token_logprobs[1:n]
        assert all(v == -9999.0 or -9999.0 < v <= 0.0 for v in vals)
        assert -9999.0 in vals and any(v > -9999.0 for v in vals)  # implausible tokens and scored ones
        assert vals != lp.token_logprobs[1:n]
        assert all(len(top) >= 1 for top in ld.top_logprobs[1:n])


def test_echo_scores_contrast_are_the_unnormalised_contrast(client: Any) -> None:
    """DoLa's MC scoring (alpha 0, echo_scores "contrast"): every prompt token gets a finite score,
    and per position the raw scores differ from the normalised ones by one constant (the
    log-normaliser of the contrast), over the prompt token and its top alternatives alike."""
    kw: dict[str, Any] = {"model": "smollm2", "prompt": "Q: What is the capital of Australia?\nA: Canberra.",
                          "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 2}
    dec = {"method": "dola", "premature_layers": "high", "alpha": 0}
    norm = client.completions.create(**kw, extra_body={"decoding": dec}).choices[0].logprobs
    raw = client.completions.create(**kw, extra_body={"decoding": {**dec, "echo_scores": "contrast"}}).choices[0].logprobs
    n = len(raw.tokens) - 1
    assert raw.tokens[:n] == norm.tokens[:n] and raw.token_logprobs[0] is None
    for t in range(1, n):
        assert raw.token_logprobs[t] > -9999.0 and sorted(raw.top_logprobs[t]) == sorted(norm.top_logprobs[t])
        shifts = [raw.token_logprobs[t] - norm.token_logprobs[t]]
        shifts += [raw.top_logprobs[t][k] - norm.top_logprobs[t][k] for k in raw.top_logprobs[t]]
        assert max(shifts) - min(shifts) < 1e-3, (t, shifts)
        assert shifts[0] > 1e-3  # not a distribution: the log-normaliser of the contrast is positive
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"decoding": {**dec, "echo_scores": "contrast"}})
    assert e.value.param == "decoding.echo_scores"


def test_ignore_eos_and_min_tokens_fix_the_output_length(client: Any) -> None:
    kw: dict[str, Any] = {"model": "smollm2", "messages": [{"role": "user", "content": "Say OK."}], "temperature": 0}
    short = client.chat.completions.create(**kw, max_tokens=64)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 64
    full = client.chat.completions.create(**kw, max_tokens=64, extra_body={"ignore_eos": True})
    assert full.usage.completion_tokens == 64 and full.choices[0].finish_reason == "length"
    floor = client.chat.completions.create(**kw, max_tokens=64, extra_body={"min_tokens": 40})
    assert 40 <= floor.usage.completion_tokens <= 64
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**kw, max_tokens=4, extra_body={"min_tokens": 5})
    assert e.value.param == "min_tokens"
