"""The real server in a subprocess, driven by the official ``openai`` client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.engine
API_KEY = "sk-test-truthsteer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "TRUTHSTEER_PORT": str(port), "TRUTHSTEER_API_KEYS": f'["{API_KEY}"]',
           "TRUTHSTEER_SERVED_MODEL_NAME": "smollm2"}
    proc = subprocess.Popen([sys.executable, "-m", "steering.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()[-4000:] if proc.stdout else ''}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            raise RuntimeError("server did not become healthy")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


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
        ({"decoding": {"method": "dola"}}, "decoding"),
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
