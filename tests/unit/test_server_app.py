"""The HTTP layer on a fake engine: request validation, error shapes, response and SSE shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.serving import Serving
from server.settings import Settings
from steering.engine import PreparedEngine
from tests.unit.helpers import INFO, make_bundle

KEY = "sk-unit"


class FakeEngine:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], Any, str]] = []
        self.aborted: list[str] = []

    async def generate(self, prompt: dict[str, Any], params: Any, rid: str) -> AsyncIterator[Any]:
        self.requests.append((prompt, params, rid))
        for k in range(params.n):
            yield SimpleNamespace(
                prompt_token_ids=prompt["prompt_token_ids"],
                outputs=[SimpleNamespace(index=k, text=" Paris", token_ids=[7042], logprobs=None, finish_reason="length")],
            )

    async def abort(self, rid: str) -> None:
        self.aborted.append(rid)

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


class FakeTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 1000 for c in text]}

    def __len__(self) -> int:
        return 1000

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


@pytest.fixture
def app_client() -> Any:
    settings = Settings(api_keys=[KEY], served_model_name="tiny", max_model_len=64, max_n=4)
    prepared = PreparedEngine("/models/tiny", INFO, {"truth": make_bundle("truth")}, {})
    engine = FakeEngine()
    serving = Serving(settings, engine, prepared, FakeTokenizer())
    with TestClient(create_app(settings, serving)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        c.engine = engine  # type: ignore[attr-defined]
        yield c


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
    assert r["usage"] == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    prompt, params, _ = app_client.engine.requests[-1]
    assert prompt["cache_salt"].startswith("truthsteer-")
    (op,) = params.extra_args["truthsteer"]["steering"]
    assert op == {"direction": "truth", "op": "add", "strength": 2.5, "layers": [1, 2], "positions": "all", "targets": []}
    plain = app_client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert plain.status_code == 200
    prompt, params, _ = app_client.engine.requests[-1]
    assert "cache_salt" not in prompt and not params.extra_args


def test_chat_stream_is_sse_with_role_usage_and_done(app_client: Any) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2,
            "stream": True, "stream_options": {"include_usage": True}}
    with app_client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[len("data: "):]) for x in lines[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"steering": [{"direction": "honesty"}]}, 400, "steering[0].direction"),
        ({"steering": [{"direction": "truth", "layers": [9]}]}, 400, "steering[0].layers"),
        ({"steering": [{"direction": "truth", "strength": 1e9}]}, 400, "steering[0].strength"),
        ({"steering": [{"direction": "truth", "op": "explode"}]}, 400, "steering[0].op"),
        ({"steering": "truth"}, 400, "steering"),
        ({"decoding": {"method": "dola"}}, 400, "decoding"),
        ({"probes": ["truth"]}, 400, "probes"),
        ({"max_tokens": 1000}, 400, "max_tokens"),
        ({"max_tokens": 0}, 400, "max_tokens"),
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
    from server.serving import chat_logprobs

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
