"""The HTTP layer on a fake engine: request validation, error shapes, response and SSE shapes."""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.protocol import CompletionRequest
from server.serving import Serving
from server.settings import Settings
from steering.engine import PreparedEngine
from tests.unit.fakes import KEY, FakeEngine, FakeTokenizer, fake_logit, fake_serving
from tests.unit.helpers import INFO


@pytest.fixture
def app_client() -> Any:
    settings = Settings(api_keys=[KEY], served_model_name="tiny", max_model_len=64, max_n=4)
    serving = fake_serving(settings)
    with TestClient(create_app(settings, serving)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        c.engine = serving.engine  # type: ignore[attr-defined]
        c.serving = serving  # type: ignore[attr-defined]
        yield c


def test_engine_requests_are_aborted_only_when_left_unfinished(app_client: Any) -> None:
    for body in ({"max_tokens": 3}, {"max_tokens": 2, "n": 3}, {"max_tokens": 3, "stream": True}):
        r = app_client.post("/v1/completions", json={"model": "tiny", "prompt": "abc", **body})
        assert r.status_code == 200
    assert app_client.engine.aborted == []  # finished requests hold no engine slot: nothing to abort
    serving = app_client.serving
    plan = serving.build(CompletionRequest(model="tiny", prompt="abc", max_tokens=3))

    async def first_piece_then_leave() -> Any:
        gen = serving.generate(plan.jobs[0], plan.scored, "completions")
        piece = await gen.__anext__()
        await gen.aclose()  # what a client that goes away mid-stream leads to
        return piece

    piece = asyncio.run(first_piece_then_leave())
    assert piece.prompt_token_ids == [ord(c) for c in "abc"]
    assert app_client.engine.aborted == [plan.jobs[0].request_id]


def test_the_start_up_heap_is_frozen_once_the_engine_it_starts_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.utils.gc_utils

    settings = Settings(served_model_name="tiny", max_model_len=64)
    events: list[str] = []

    def start(_settings: Settings) -> Serving:
        events.append("engine started")
        return fake_serving(settings)

    monkeypatch.setattr(Serving, "start", staticmethod(start))
    monkeypatch.setattr(vllm.utils.gc_utils, "freeze_gc_heap", lambda: events.append("heap frozen"))
    with TestClient(create_app(settings)) as c:
        assert c.get("/health").status_code == 200
    assert events == ["engine started", "heap frozen"]
    events.clear()
    with TestClient(create_app(settings, start(settings))):  # an injected Serving: the caller's process
        pass
    assert events == ["engine started"]


def test_models_directions_health(app_client: Any) -> None:
    assert app_client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    d = app_client.get("/v1/directions").json()["data"][0]
    assert d["name"] == "truth" and d["recommended_layers"] == [0, 1] and d["probe_layer"] == 0
    assert app_client.get("/health", headers={"Authorization": ""}).json() == {"status": "ok"}


def test_completion_shape_and_steering_reaches_the_engine(app_client: Any) -> None:
    body = {"model": "tiny", "prompt": "The capital", "max_tokens": 3, "n": 2,
            "steering": [{"direction": "truth", "strength": 2.5, "layers": {"start": 1, "end": 3}}]}
    r = app_client.post("/v1/completions", json=body).json()
    assert r["object"] == "text_completion" and [c["index"] for c in r["choices"]] == [0, 1]
    assert r["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
    assert [c["text"] for c in r["choices"]] == [" Paris" * 3] * 2
    prompt, params, _ = app_client.engine.requests[-1]
    assert prompt["cache_salt"].startswith("truthsteer-")
    (op,) = params.extra_args["truthsteer"]["steering"]
    assert op == {"direction": "truth", "op": "add", "strength": 2.5, "layers": [1, 2], "positions": "all", "targets": []}
    plain = app_client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert plain.status_code == 200
    prompt, params, _ = app_client.engine.requests[-1]
    assert "cache_salt" not in prompt and not params.extra_args


def test_vllm_extensions_ignore_eos_and_min_tokens_reach_the_engine(app_client: Any) -> None:
    for url, body in (("/v1/completions", {"prompt": "x"}),
                      ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        r = app_client.post(url, json={"model": "tiny", "max_tokens": 3, "ignore_eos": True, "min_tokens": 2, **body})
        assert r.status_code == 200, r.text
        _, params, _ = app_client.engine.requests[-1]
        assert params.ignore_eos is True and params.min_tokens == 2 and params.max_tokens == 3
    app_client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    _, params, _ = app_client.engine.requests[-1]
    assert params.ignore_eos is False and params.min_tokens == 0


def test_decoding_reaches_the_engine_on_both_endpoints_without_cache_salt(app_client: Any) -> None:
    body = {"model": "tiny", "prompt": "The capital", "max_tokens": 2,
            "decoding": {"method": "contrast", "premature_layers": [1, 3], "weights": [1, 3], "entropy_threshold": 2}}
    assert app_client.post("/v1/completions", json=body).status_code == 200
    prompt, params, _ = app_client.engine.requests[-1]
    assert "cache_salt" not in prompt
    assert params.extra_args["truthsteer"] == {"decoding": {
        "method": "contrast", "layers": [1, 3], "weights": [0.25, 0.75], "alpha": 0.1, "entropy_threshold": 2.0,
        "repetition_penalty": 1.0}}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2,
            "decoding": {"method": "dola", "premature_layers": "low"}, "probes": ["truth"],
            "steering": [{"direction": "truth", "strength": 1.0}]}
    assert app_client.post("/v1/chat/completions", json=chat).status_code == 200
    prompt, params, _ = app_client.engine.requests[-1]
    ext = params.extra_args["truthsteer"]
    assert ext["decoding"]["method"] == "dola" and ext["decoding"]["layers"] == [0]  # 4 untied layers: low = [0]
    assert sorted(ext) == ["decoding", "probes", "steering"]
    assert app_client.post("/v1/completions", json={**body, "decoding": {"method": "none"}}).status_code == 200
    assert not app_client.engine.requests[-1][1].extra_args
    metrics = app_client.get("/metrics").text
    assert 'truthsteer_decoding_requests_total{method="contrast"} 1.0' in metrics
    assert 'truthsteer_decoding_requests_total{method="dola"} 1.0' in metrics


def test_chat_stream_is_sse_with_role_usage_and_done(app_client: Any) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2,
            "stream": True, "stream_options": {"include_usage": True}}
    with app_client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[len("data: "):]) for x in lines[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"steering": [{"direction": "honesty"}]}, 400, "steering[0].direction"),
        ({"steering": [{"direction": "truth", "layers": [9]}]}, 400, "steering[0].layers"),
        ({"steering": [{"direction": "truth", "strength": 1e9}]}, 400, "steering[0].strength"),
        ({"steering": [{"direction": "truth", "op": "explode"}]}, 400, "steering[0].op"),
        ({"steering": "truth"}, 400, "steering"),
        ({"decoding": {"method": "dola", "premature_layers": [4]}}, 400, "decoding.premature_layers"),
        ({"decoding": {"method": "dola", "weights": [1]}}, 400, "decoding.weights"),
        ({"decoding": {"method": "beam"}}, 400, "decoding.method"),
        ({"decoding": "dola"}, 400, "decoding"),
        ({"decoding": {"method": "dola", "gate": {"probe": "nope", "below": 0.5}}}, 400, "decoding.gate.probe"),
        ({"decoding": {"method": "dola", "gate": {"probe": "truth", "below": 0.5, "initial": "open"}}}, 400,
         "decoding.gate.initial"),
        ({"probes": ["honesty"]}, 400, "probes[0]"),
        ({"probes": "some"}, 400, "probes"),
        ({"max_tokens": 1000}, 400, "max_tokens"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"min_tokens": 3}, 400, "min_tokens"),
        ({"min_tokens": -1}, 400, "min_tokens"),
        ({"ignore_eos": "sometimes"}, 400, "ignore_eos"),
        ({"temperature": 3}, 400, "temperature"),
        ({"n": 5}, 400, "n"),
        ({"logprobs": 50}, 400, "logprobs"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": [5000]}, 400, "prompt"),
        ({"surprise": 1}, 400, "surprise"),
        ({"model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_input_names_the_parameter(app_client: Any, body: dict[str, Any], status: int, param: str) -> None:
    payload = {"model": "tiny", "prompt": "x", "max_tokens": 2, **body}
    r = app_client.post("/v1/completions", json=payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_auth_body_size_and_malformed_json(app_client: Any) -> None:
    r = app_client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = app_client.post("/v1/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    big = {"model": "tiny", "prompt": "x" * (2 << 20)}
    r = app_client.post("/v1/completions", json=big)
    assert r.status_code == 413
    r = app_client.post("/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert app_client.get("/v1/nowhere").status_code == 404


def test_chat_top_logprobs_are_the_top_k_whether_or_not_the_sampled_token_is_among_them() -> None:
    from server.formatting import chat_logprobs

    lp = lambda logprob, rank: SimpleNamespace(logprob=logprob, rank=rank)  # noqa: E731
    in_top = {65: lp(-0.1, 1), 66: lp(-2.0, 2)}  # sampled 'A' is rank 1
    below = {67: lp(-3.0, 5), 65: lp(-0.1, 1), 66: lp(-2.0, 2)}  # sampled 'C' ranks 5th
    out = chat_logprobs(FakeTokenizer(), [65, 67], [in_top, below], top_k=2)
    assert out is not None
    first, second = out["content"]
    assert first["token"] == "A" and [t["token"] for t in first["top_logprobs"]] == ["A", "B"]
    assert second["token"] == "C" and second["logprob"] == -3.0
    assert [t["token"] for t in second["top_logprobs"]] == ["A", "B"]
    assert chat_logprobs(FakeTokenizer(), [65], [in_top], top_k=0)["content"][0]["top_logprobs"] == []  # type: ignore[index]
    assert chat_logprobs(FakeTokenizer(), [65], None, top_k=2) is None


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


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


def test_probes_with_n_give_every_choice_its_own_request_id_and_seed(app_client: Any) -> None:
    body = {"model": "tiny", "prompt": ["ab", "abcdef"], "max_tokens": 2, "n": 2, "seed": 7, "probes": "all"}
    r = app_client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    for c in r["choices"]:
        n = 2 if c["index"] < 2 else 6
        assert c["probe_scores"]["truth"]["tokens"] == pytest.approx([sig(fake_logit(n, n - 1 + k)) for k in range(2)])
    sent = app_client.engine.requests[-4:]
    assert sorted(p.seed for _, p, _ in sent) == [7, 7, 8, 8] and all(p.n == 1 for _, p, _ in sent)
    ids = {p.extra_args["truthsteer"]["probes"]["id"] for _, p, _ in sent}
    assert len(ids) == 4


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


def test_probe_score_endpoint_last_and_mean(app_client: Any) -> None:
    body = {"model": "tiny", "input": ["abc", "abcdefg"], "probes": ["truth"]}
    r = app_client.post("/v1/probes/score", json=body)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert data[0]["scores"]["truth"] == pytest.approx(sig(fake_logit(3, 2)))
    assert data[1]["scores"]["truth"] == pytest.approx(sig(fake_logit(7, 6)))
    m = app_client.post("/v1/probes/score", json={**body, "input": "abcd", "reduce": "mean"}).json()
    assert m["data"][0]["scores"]["truth"] == pytest.approx(sum(sig(fake_logit(4, p)) for p in range(4)) / 4)
    prompt, params, _ = app_client.engine.requests[-1]
    assert prompt["cache_salt"] and params.max_tokens == 1  # mean: every position computed, not cached
    for bad, param in (({"probes": ["nope"]}, "probes[0]"), ({"input": []}, "input"), ({"input": [""]}, "input[0]"),
                       ({"input": ["x"] * 65}, "input"), ({"reduce": "max"}, "reduce")):
        e = app_client.post("/v1/probes/score", json={**body, **bad})
        assert e.status_code == 400 and e.json()["error"]["param"] == param, (bad, e.text)


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


def test_metrics_after_traffic(app_client: Any) -> None:
    app_client.post("/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 2, "probes": ["truth"],
                                             "steering": [{"direction": "truth", "strength": 1.0}]})
    app_client.post("/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 2, "n": 99})
    text = app_client.get("/metrics").text
    assert 'truthsteer_requests_total{endpoint="completions",status="200"} 1.0' in text
    assert 'truthsteer_requests_total{endpoint="completions",status="400"} 1.0' in text
    assert 'truthsteer_steering_ops_total{direction="truth",op="add"} 1.0' in text
    assert 'truthsteer_probe_score_count{probe="truth"} 1.0' in text
    assert "truthsteer_completion_tokens_total 2.0" in text and "truthsteer_prompt_tokens_total 3.0" in text
    assert 'truthsteer_time_to_first_token_seconds_count{endpoint="completions"} 1.0' in text
    assert "truthsteer_inter_token_latency_seconds_count 1.0" in text
    assert 'truthsteer_rejected_requests_total{code="invalid_value"} 1.0' in text


def test_abstain_replaces_low_scoring_choices_and_keeps_the_original_on_request(app_client: Any) -> None:
    base = {"model": "tiny", "prompt": "abcd", "max_tokens": 3}
    r = app_client.post("/v1/completions", json={**base, "abstain": {"probe": "truth", "below": 2.0,
                                                                     "message": "Not sure.", "return_original": True}})
    (c,) = r.json()["choices"]
    assert c["text"] == "Not sure." and c["finish_reason"] == "abstained"
    want = sum(sig(fake_logit(4, 3 + k)) for k in range(3)) / 3
    assert c["abstain"]["score"] == pytest.approx(want) and c["abstain"]["original"] == " Paris" * 3
    assert "probe_scores" not in c  # the abstain probe is read, but not shown unless asked for
    kept = app_client.post("/v1/completions", json={**base, "abstain": {"probe": "truth", "below": -1.0,
                                                                        "reduce": "min"}}).json()["choices"][0]
    assert kept["text"] == " Paris" * 3 and kept["finish_reason"] == "length" and kept["abstain"]["abstained"] is False
    assert "original" not in kept["abstain"]
    chat = app_client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "q"}],
                                                          "abstain": {"probe": "truth", "below": 2.0}}).json()
    assert chat["choices"][0]["message"]["content"] == "I am not confident enough to answer this."
    bad = app_client.post("/v1/completions", json={**base, "abstain": {"probe": "nope", "below": 0.5}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "abstain.probe"
    text = app_client.get("/metrics").text
    assert 'truthsteer_abstentions_total{probe="truth"} 2.0' in text


def test_abstain_in_a_stream_sends_each_choice_whole_at_the_end(app_client: Any) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
            "n": 2, "abstain": {"probe": "truth", "below": 2.0, "message": "Pass."}, "probes": ["truth"]}
    with app_client.stream("POST", "/v1/chat/completions", json=body) as r:
        chunks = [json.loads(x[len("data: "):]) for x in r.iter_lines() if x and x != "data: [DONE]"]
    assert len(chunks) == 2  # one per choice, nothing streamed before the decision
    for ch in chunks:
        (c,) = ch["choices"]
        assert c["delta"] == {"role": "assistant", "content": "Pass."} and c["finish_reason"] == "abstained"
        assert len(c["probe_scores"]["truth"]) == 3 and c["probe_summary"]["truth"]["tokens"] == c["probe_scores"]["truth"]


def test_interventions_count_steered_tokens(app_client: Any) -> None:
    base = {"model": "tiny", "prompt": "abcd", "max_tokens": 3}

    def iv(steering: list[dict[str, Any]]) -> dict[str, Any]:
        r = app_client.post("/v1/completions", json={**base, "steering": steering})
        assert r.status_code == 200, r.text
        return dict(r.json()["choices"][0]["interventions"])

    assert iv([{"direction": "truth"}]) == {"steered_tokens": 3, "contrasted_tokens": 0}
    assert iv([{"direction": "truth", "positions": "generated"}])["steered_tokens"] == 2
    assert iv([{"direction": "truth", "positions": "prompt"}])["steered_tokens"] == 1
    # gated: the worker's per-token flags (the fake engine steers every step after the first)
    gated = iv([{"direction": "truth", "gate": {"probe": "truth", "below": 0.5}}])
    assert gated["steered_tokens"] == 2
    _prompt, params, _ = app_client.engine.requests[-1]
    assert params.extra_args["truthsteer"]["probes"]["id"]  # gated requests get a probe id
    plain = app_client.post("/v1/completions", json=base).json()["choices"][0]
    assert "interventions" not in plain


def test_interventions_count_contrasted_tokens_of_probe_gated_decoding(app_client: Any) -> None:
    base = {"model": "tiny", "prompt": "abcd", "max_tokens": 3}

    def iv(**extra: Any) -> dict[str, Any]:
        r = app_client.post("/v1/completions", json={**base, **extra})
        assert r.status_code == 200, r.text
        return dict(r.json()["choices"][0]["interventions"])

    def contrasted_total() -> float:
        line = 'truthsteer_intervention_tokens_total{direction="dola",kind="contrasted"} '
        text = app_client.get("/metrics").text
        return float(text.split(line, 1)[1].split()[0])

    before = contrasted_total()
    gate = {"probe": "truth", "below": 0.5, "hold": 1}
    assert iv(decoding={"method": "dola"}) == {"steered_tokens": 0, "contrasted_tokens": 3}
    # the fake worker flags steps 0 and 2 as contrasted
    assert iv(decoding={"method": "dola", "gate": gate}) == {"steered_tokens": 0, "contrasted_tokens": 2}
    _prompt, params, _ = app_client.engine.requests[-1]
    ext = params.extra_args["truthsteer"]
    assert ext["probes"]["id"] and ext["decoding"]["gate"] == {**gate, "above": None, "window": 1, "initial": "closed"}
    both = iv(decoding={"method": "dola", "gate": gate},
              steering=[{"direction": "truth", "gate": {"probe": "truth", "below": 0.5}}])
    assert both == {"steered_tokens": 2, "contrasted_tokens": 2}
    # an entropy gate decides in the sampler, after the flags: the count is unknown
    assert iv(decoding={"method": "dola", "gate": gate, "entropy_threshold": 1.0})["contrasted_tokens"] is None
    assert contrasted_total() - before == 3 + 2 + 2


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


def test_client_disconnect_cancels_the_work_and_its_engine_requests() -> None:
    from server.app import until_disconnect
    from server.errors import APIError

    class Gone:
        def __init__(self) -> None:
            self.polls = 0

        async def is_disconnected(self) -> bool:
            self.polls += 1
            return self.polls >= 2

    aborted: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            aborted.append("engine request aborted")  # what Serving.generate's finally does

    async def main() -> None:
        with pytest.raises(APIError) as e:
            await until_disconnect(Gone(), work(), poll_s=0.01)  # type: ignore[arg-type]
        assert e.value.status == 499
        await asyncio.sleep(0)

    asyncio.run(main())
    assert aborted == ["engine request aborted"]


def test_echo_with_logprobs_under_decoding_asks_the_engine_for_contrasted_prompt_logprobs(app_client: Any) -> None:
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 1, "echo": True, "logprobs": 1,
            "decoding": {"method": "dola", "premature_layers": [1, 3]}}
    r = app_client.post("/v1/completions", json=body)
    assert r.status_code == 200
    _prompt, params, _ = app_client.engine.requests[-1]
    assert params.prompt_logprobs == 1 and params.extra_args["truthsteer"]["decoding"]["layers"] == [1, 3]
    # the repetition penalty has no per-position history for prompt tokens: refused, naming the field
    bad = app_client.post("/v1/completions", json={**body, "decoding": {**body["decoding"], "repetition_penalty": 1.2}})
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert err["param"] == "decoding.repetition_penalty" and err["type"] == "invalid_request_error"
    # without echo (or without logprobs) the penalty stays allowed
    assert app_client.post("/v1/completions", json={**body, "echo": False,
                                                   "decoding": {"method": "dola", "repetition_penalty": 1.2}}
                           ).status_code == 200
    # raw contrast scores (DoLa's MC scoring) reach the engine; outside echo scoring they are a 400
    raw = {**body["decoding"], "alpha": 0, "echo_scores": "contrast"}
    assert app_client.post("/v1/completions", json={**body, "decoding": raw}).status_code == 200
    _prompt, params, _ = app_client.engine.requests[-1]
    assert params.extra_args["truthsteer"]["decoding"]["echo_scores"] == "contrast"
    assert params.extra_args["truthsteer"]["decoding"]["alpha"] == 0.0
    for extra in ({"echo": False}, {"logprobs": None}):
        r = app_client.post("/v1/completions", json={**body, **extra, "decoding": raw})
        assert r.status_code == 400 and r.json()["error"]["param"] == "decoding.echo_scores", r.text
    r = app_client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                      "decoding": raw})
    assert r.status_code == 400 and r.json()["error"]["param"] == "decoding.echo_scores"


def test_echo_under_decoding_is_a_400_when_the_server_disables_prompt_contrast() -> None:
    settings = Settings(served_model_name="tiny", max_model_len=64, prompt_contrast=False)
    prepared = PreparedEngine("/models/tiny", INFO, {}, {})
    with TestClient(create_app(settings, Serving(settings, FakeEngine(), prepared, FakeTokenizer()))) as c:
        body = {"model": "tiny", "prompt": "abc", "max_tokens": 1, "echo": True, "logprobs": 0,
                "decoding": {"method": "dola"}}
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "decoding" and err["code"] == "prompt_contrast_disabled"
        assert "prompt_contrast" in err["message"]
        assert c.post("/v1/completions", json={**body, "echo": False}).status_code == 200
        assert c.post("/v1/completions", json={k: v for k, v in body.items() if k != "decoding"}).status_code == 200


def test_minus_infinity_logprobs_are_written_as_minus_9999() -> None:
    from server.formatting import completion_logprobs

    lp = [None, {5: SimpleNamespace(logprob=-math.inf, rank=9), 6: SimpleNamespace(logprob=0.0, rank=1)}]
    out = completion_logprobs(FakeTokenizer(), [4, 5], lp)
    assert out is not None and out["token_logprobs"] == [None, -9999.0]
    assert out["top_logprobs"][1] == {chr(5): -9999.0, chr(6): 0.0}
    json.dumps(out, allow_nan=False)


def test_body_limit_without_a_declared_length_and_request_metrics_of_a_stream(app_client: Any) -> None:
    import json

    def chunks(n: int) -> Any:  # no content-length: the client sends the body chunked
        body = json.dumps({"model": "tiny", "prompt": "x" * n, "max_tokens": 2}).encode()
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    headers = {"content-type": "application/json"}
    r = app_client.post("/v1/completions", content=chunks(2 << 20), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = app_client.post("/v1/completions", content=chunks(10), headers=headers)  # a small chunked body is read whole
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    with app_client.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 3,
                                                            "stream": True}) as s:
        assert s.status_code == 200 and list(s.iter_lines())[-2:] == ["data: [DONE]", ""]
    text = app_client.get("/metrics").text
    assert 'truthsteer_requests_total{endpoint="completions",status="413"} 1.0' in text
    assert 'truthsteer_requests_total{endpoint="completions",status="200"} 2.0' in text
    assert 'truthsteer_request_duration_seconds_count{endpoint="completions"} 3.0' in text
    assert 'truthsteer_requests_in_flight{endpoint="completions"} 0.0' in text


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


def test_directions_list_each_layers_stats(app_client: Any) -> None:
    card = app_client.get("/v1/directions").json()["data"][0]
    bundle = app_client.serving.prepared.bundles["truth"]
    assert card["layer_stats"] == {k: v.model_dump() for k, v in bundle.meta.layer_stats.items()}
    assert set(card["layer_stats"]) == {str(k) for k in bundle.meta.layers}


class SlowTokenizer(FakeTokenizer):
    """Blocks for ``delay_s`` per call (as a long prompt or a heavy chat template would) and records
    the thread it ran on."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.threads: set[str] = set()

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        import threading
        import time

        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return super().__call__(text, add_special_tokens)


def test_tokenisation_and_chat_templates_run_off_the_event_loop() -> None:
    """While a slow tokenizer runs for a completion, a chat and a probe-score request, the event
    loop that streams tokens keeps ticking (the largest gap stays far below the tokenizer's time)."""
    import time

    from server.completions import collect
    from server.protocol import ChatCompletionRequest, ProbeScoreRequest
    from server.scoring import score_texts

    settings = Settings(served_model_name="tiny", max_model_len=64)
    serving = fake_serving(settings)
    slow = SlowTokenizer(0.0)
    serving.tokenizer = slow

    async def main() -> tuple[float, list[Any]]:
        await serving.connect_probes()
        await collect(serving, CompletionRequest(model="tiny", prompt="warm-up", max_tokens=1))  # first imports
        slow.delay_s = 0.4
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        try:
            out = [
                await collect(serving, CompletionRequest(model="tiny", prompt="abc", max_tokens=2)),
                await collect(serving, ChatCompletionRequest(model="tiny", max_tokens=2,
                                                             messages=[{"role": "user", "content": "hi"}])),
                await score_texts(serving, ProbeScoreRequest(model="tiny", input=["a b", "c"], probes=["truth"])),
            ]
        finally:
            done.set()
            await tick
            await serving.close()
        return max(gaps), out

    worst, (completion, chat, scores) = asyncio.run(main())
    assert completion["choices"][0]["text"] == " Paris Paris" and chat["choices"][0]["message"]["content"]
    assert [d["tokens"] for d in scores["data"]] == [3, 1]
    assert slow.threads and all(name.startswith("truthsteer-prep") for name in slow.threads)
    assert worst < 0.2, worst  # each tokenizer call blocks 0.4 s
