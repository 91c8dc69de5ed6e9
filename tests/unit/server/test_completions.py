"""Completion and chat responses and their SSE streams on the fake engine: shapes, per-token probe
scores and summaries, token flags, echo with logprobs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.fakes import fake_logit, sig


def test_chat_stream_is_sse_with_role_usage_and_done(app_client: Any) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2,
            "stream": True, "stream_options": {"include_usage": True}}
    with app_client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[len("data: "):]) for x in lines[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2

def test_probe_scores_per_generated_token_and_summary(app_client: Any) -> None:
    body = {"model": "tiny", "prompt": "abcd", "max_tokens": 3, "probes": ["truth"]}
    r = app_client.post("/v1/completions", json=body).json()
    (choice,) = r["choices"]
    s = choice["probe_scores"]["truth"]
    want = [sig(fake_logit(4, 3 + k)) for k in range(3)]  # token k is sampled at position n_prompt - 1 + k
    assert s["tokens"] == pytest.approx(want) and len(s["tokens"]) == r["usage"]["completion_tokens"]
    assert s["mean"] == pytest.approx(sum(want) / 3) and s["min"] == pytest.approx(min(want))
    assert s["last"] == pytest.approx(want[-1]) and s["flagged"] is (sum(want) / 3 < 0.5)
    plain = app_client.post("/v1/completions", json={**body, "probes": None}).json()
    assert "probe_scores" not in plain["choices"][0]
    assert "probes" not in (app_client.engine.requests[-1][1].extra_args or {}).get("truthsteer", {})

def test_stream_chunks_carry_their_tokens_scores_and_the_last_the_summary(app_client: Any) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
            "probes": ["truth"]}
    with app_client.stream("POST", "/v1/chat/completions", json=body) as r:
        chunks = [json.loads(x[len("data: "):]) for x in r.iter_lines() if x and x != "data: [DONE]"]
    n_prompt = len("<user>hi<assistant>")
    per_chunk = [c["choices"][0]["probe_scores"]["truth"] for c in chunks]
    assert per_chunk == [pytest.approx([sig(fake_logit(n_prompt, n_prompt - 1 + k))]) for k in range(3)]
    assert "probe_summary" not in chunks[0]["choices"][0]
    summary = chunks[-1]["choices"][0]["probe_summary"]["truth"]
    assert summary["tokens"] == pytest.approx([x[0] for x in per_chunk])

def test_concurrent_probe_requests_never_mix(app_client: Any) -> None:
    import concurrent.futures

    def one(n: int) -> tuple[int, list[float]]:
        r = app_client.post("/v1/completions", json={"model": "tiny", "prompt": "x" * n, "max_tokens": 3,
                                                     "probes": ["truth"]})
        return n, r.json()["choices"][0]["probe_scores"]["truth"]["tokens"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(1, 17)))
    for n, tokens in results:
        assert tokens == pytest.approx([sig(fake_logit(n, n - 1 + k)) for k in range(3)])

def test_echo_with_logprobs_scores_the_prompt(app_client: Any) -> None:
    r = app_client.post("/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 1, "echo": True,
                                                 "logprobs": 0}).json()
    (c,) = r["choices"]
    assert c["text"] == "abc Paris"
    lp = c["logprobs"]
    assert lp["tokens"][:3] == ["a", "b", "c"] and lp["token_logprobs"][:3] == [None, -0.5, -1.0]
    assert lp["top_logprobs"][0] is None and len(lp["tokens"]) == 4 and lp["token_logprobs"][3] == -0.25
    _prompt, params, _ = app_client.engine.requests[-1]
    assert params.prompt_logprobs == 0

def test_stream_token_flags_are_per_token_and_sum_to_the_interventions(app_client: Any) -> None:
    base = {"model": "tiny", "prompt": "abcd", "max_tokens": 3, "stream": True}

    def stream_flags(**extra: Any) -> tuple[list[Any], list[Any], dict[str, Any]]:
        with app_client.stream("POST", "/v1/completions", json={**base, **extra}) as r:
            chunks = [json.loads(x[len("data: "):]) for x in r.iter_lines() if x and x != "data: [DONE]"]
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        steered = [f for ch in choices for f in ch["token_flags"]["steered"]]
        contrasted = [f for ch in choices for f in ch["token_flags"]["contrasted"]]
        return steered, contrasted, choices[-1]["interventions"]

    # ungated: from the operations' positions; gated: the worker's flags (steered from step 1 on)
    assert stream_flags(steering=[{"direction": "truth", "positions": "generated"}])[:2] == \
        ([False, True, True], [False, False, False])
    steered, contrasted, iv = stream_flags(steering=[{"direction": "truth", "gate": {"probe": "truth", "below": 0.5}}],
                                           decoding={"method": "dola", "gate": {"probe": "truth", "below": 0.5}})
    assert (steered, contrasted) == ([False, True, True], [True, False, True])  # fake worker: steps 0, 2 contrasted
    assert iv == {"steered_tokens": sum(steered), "contrasted_tokens": sum(contrasted)}
    assert stream_flags(decoding={"method": "dola", "entropy_threshold": 1.0})[1] == [None, None, None]
    with app_client.stream("POST", "/v1/completions", json=base) as r:
        plain = [json.loads(x[len("data: "):]) for x in r.iter_lines() if x and x != "data: [DONE]"]
    assert all("token_flags" not in c["choices"][0] for c in plain)
