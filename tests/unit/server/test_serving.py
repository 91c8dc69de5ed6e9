"""``Serving`` on the fake engine: what reaches the engine (sampling parameters, steering, decoding,
probe ids and seeds, cache salt), validation errors naming the parameter, aborts of unfinished
requests, and tokenisation off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.protocol import CompletionRequest
from server.serving import Serving
from server.settings import Settings
from steering.engine import PreparedEngine
from tests.support.fakes import FakeEngine, FakeTokenizer, fake_logit, fake_serving, sig
from tests.support.tiny import INFO


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
