"""Default steering, inline vectors and the live direction registry on the real server.

One server for the module (real engine, default model, official ``openai`` client) with a
server-wide default (``truth`` at strength 12), two registry slots and an admin key. Greedy
outputs are compared between requests that steer with the same vectors through different routes
(start-up bundle, pushed bundle, inline vector), alone and mixed in one batch.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from steering.bundle import DirectionBundle, load_bundle, save_bundle
from steering.engine import DEFAULT_DIRECTIONS
from tests.support.serve import running_server

pytestmark = pytest.mark.engine
KEY, ADMIN = "sk-live-user", "sk-live-admin"
TRUTH = load_bundle(DEFAULT_DIRECTIONS / "truth.safetensors")
SYCO = load_bundle(DEFAULT_DIRECTIONS / "sycophancy.safetensors")
LAYERS = [16, 17, 18]
DEFAULT = [{"direction": "truth", "strength": 12.0, "layers": LAYERS}]
PROMPT = "The city of Paris is located in"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    env = {"TRUTHSTEER_API_KEYS": f'["{KEY}"]', "TRUTHSTEER_ADMIN_API_KEYS": f'["{ADMIN}"]',
           "TRUTHSTEER_SERVED_MODEL_NAME": "smollm2", "TRUTHSTEER_DEFAULT_STEERING": json.dumps(DEFAULT),
           "TRUTHSTEER_MAX_DIRECTIONS": "2", "TRUTHSTEER_KV_CACHE_GIB": "1"}
    with running_server(env) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def renamed(b: DirectionBundle, name: str, tmp: Path) -> Path:
    return save_bundle(DirectionBundle(meta=b.meta.model_copy(update={"name": name}), vectors=b.vectors,
                                       probe_weight=b.probe_weight), tmp / f"{name}-{b.name}.safetensors")


def complete(client: Any, steering: list[dict[str, Any]] | None, **extra: Any) -> str:
    body = {} if steering is None else {"steering": steering}
    r = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12, temperature=0,
                                  extra_body={**body, **extra})
    return str(r.choices[0].text)


def push(server: str, path: Path, key: str, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli.main", "directions", "push", str(path), "--url", server,
                           "--key", key, *more], capture_output=True, text=True, timeout=120)


def inline(b: DirectionBundle) -> dict[str, Any]:
    vec = {str(k): base64.b64encode(b.vectors[k].numpy().astype("<f4").tobytes()).decode() for k in LAYERS}
    return {"vector": vec, "strength": 12.0}


def test_default_steering_unless_the_request_opts_out(client: Any, server: str) -> None:
    implicit, explicit, plain = complete(client, None), complete(client, DEFAULT), complete(client, [])
    assert implicit == explicit != plain
    listed = httpx.get(f"{server}/v1/directions", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [(d["direction"], d["layers"]) for d in listed["default_steering"]] == [("truth", LAYERS)]
    metrics = httpx.get(f"{server}/metrics").text
    assert "truthsteer_default_steering_requests_total 1.0" in metrics


def test_pushed_inline_and_start_up_vectors_steer_alike_alone_and_in_one_batch(client: Any, server: str,
                                                                               tmp_path: Path) -> None:
    r = push(server, renamed(TRUTH, "truth-live", tmp_path), KEY)
    assert r.returncode == 1 and "admin_required" in r.stderr
    r = push(server, renamed(TRUTH, "truth-live", tmp_path), ADMIN)
    assert r.returncode == 0, r.stderr
    live = [{"direction": "truth-live", "strength": 12.0, "layers": LAYERS}]
    cases = {"start-up": DEFAULT, "live": live, "inline": [inline(TRUTH)], "plain": [],
             "syco inline": [inline(SYCO)]}
    solo = {name: complete(client, ops) for name, ops in cases.items()}
    assert solo["start-up"] == solo["live"] == solo["inline"] != solo["plain"]
    with ThreadPoolExecutor(len(cases) * 2) as pool:  # concurrent: one engine batch
        mixed = list(pool.map(lambda kv: (kv[0], complete(client, kv[1])), list(cases.items()) * 2))
    assert all(text == solo[name] for name, text in mixed), mixed
    # probe scores keep working on a pushed direction: the same as on the start-up one
    scores = [client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, temperature=0,
                                        extra_body={"steering": ops, "probes": ["truth"]}).choices[0]
              .model_extra["probe_scores"]["truth"]["tokens"] for ops in (DEFAULT, live)]
    assert scores[0] == scores[1]
    # replaced by other vectors: the next request uses them
    r = push(server, renamed(SYCO, "truth-live", tmp_path), ADMIN, "--replace")
    assert r.returncode == 0, r.stderr
    assert complete(client, live) == solo["syco inline"] != solo["live"]
    cards = httpx.get(f"{server}/v1/directions", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert {d["name"]: d["live"] for d in cards}["truth-live"] is True


def test_bad_requests_name_the_parameter(client: Any, server: str, tmp_path: Path) -> None:
    import openai

    nan = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 2,
           "steering": [{"vector": [float("nan")] * 576, "layers": [3]}]}  # the openai client refuses NaN
    r = httpx.post(f"{server}/v1/completions", content=json.dumps(nan), timeout=60,
                   headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steering[0].vector", r.text
    bad_vectors = [({"vector": [0.1] * 575, "layers": [3]}, "steering[0].vector"),
                   ({"vector": [1e6] * 576, "layers": [3]}, "steering[0].vector"),
                   ({"vector": [0.1] * 576, "layers": [3], "site": "mlp"}, "steering[0].site")]
    for op, param in bad_vectors:
        with pytest.raises(openai.BadRequestError) as ei:
            complete(client, [op])
        assert ei.value.body["param"] == param, ei.value.body  # type: ignore[index]
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.delete(f"{server}/v1/directions/truth", headers=admin).status_code == 409
    for name in ("a", "b", "c"):
        r = httpx.post(f"{server}/v1/directions", headers=admin, timeout=60, json={
            "data": base64.b64encode(renamed(TRUTH, name, tmp_path).read_bytes()).decode()})
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "registry_full"
            break
    else:
        pytest.fail("a registry of 2 slots took 3 more directions")
    assert httpx.delete(f"{server}/v1/directions/a", headers=admin).json()["deleted"] is True
    with pytest.raises(openai.BadRequestError) as ei:
        complete(client, [{"direction": "a"}])
    assert ei.value.body["param"] == "steering[0].direction"  # type: ignore[index]
    assert complete(client, DEFAULT) == complete(client, None)  # still serving


def test_activations_are_the_models_hidden_states(server: str) -> None:
    """POST /v1/activations (no steering: the default applies to completions only) against HF
    transformers' ``hidden_states[k + 1]`` on the same weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steering.models import resolve_model

    path = str(resolve_model(None))
    texts = ["The city of Paris is located in France.", "Lyon"]
    layers = [0, 16, 28]  # HF's hidden_states[30] is after the final norm
    r = httpx.post(f"{server}/v1/activations", timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "smollm2", "input": texts, "layers": layers, "positions": "all"})
    assert r.status_code == 200, r.text
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    for item, text in zip(r.json()["data"], texts, strict=True):
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert item["tokens"] == ids.shape[1]
        with torch.no_grad():
            hs = hf(ids, output_hidden_states=True).hidden_states
        for k in layers:
            a = item["layers"][str(k)]
            got = np.frombuffer(base64.b64decode(a["data"]), "<f4").reshape(a["shape"])
            ref = hs[k + 1][0].numpy()
            rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
            assert rel.max() < 1e-4, (k, rel)
