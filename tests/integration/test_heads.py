"""Head-level (``attn_heads``) steering on the real server, driven by the official ``openai`` client.

One server for the module: the shipped bundles plus a head bundle written here (seeded random
head vectors of norm 6 at seven (layer, head) pairs of the default model, fingerprinted for it).
Checks: steering changes greedy outputs and strength 0 equals no steering exactly; next-token
log-probabilities equal an HF reference that adds ``strength * v`` to ``o_proj``'s input; residual,
head and unsteered requests in one concurrent batch equal their solo runs; bad input is a 4xx
naming the parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from steering.bundle import save_bundle
from steering.engine import DEFAULT_DIRECTIONS
from steering.model_info import describe
from steering.models import resolve_model
from steering.spec import ResolvedOp
from tests.support.reference import last_token_logprobs
from tests.support.serve import running_server
from tests.support.toy_heads import make_head_bundle

pytestmark = pytest.mark.engine
KEY = "sk-heads"
SELECTED = [(8, 1), (10, 4), (12, 7), (14, 2), (16, 0), (18, 5), (20, 8)]
PROMPT = "The city of Paris is located in"


def head_bundle(folder: Path) -> Path:
    info = describe(resolve_model(None))
    b = make_head_bundle("iti", info, SELECTED, num_heads=info.num_heads, head_dim=info.head_dim, seed=11,
                         strength=4.0)
    for v in b.head_vectors.values():
        norms = v.norm(dim=1, keepdim=True)
        v.copy_(torch.where(norms > 0, 6.0 * v / norms.clamp_min(1e-12), v))
    return save_bundle(b, folder / "iti.safetensors")


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return head_bundle(tmp_path_factory.mktemp("heads"))


@pytest.fixture(scope="module")
def server(bundle_path: Path) -> Iterator[str]:
    dirs = [str(DEFAULT_DIRECTIONS / "truth.safetensors"), str(DEFAULT_DIRECTIONS / "sycophancy.safetensors"),
            str(bundle_path)]
    env = {"TRUTHSTEER_API_KEYS": f'["{KEY}"]', "TRUTHSTEER_SERVED_MODEL_NAME": "smollm2",
           "TRUTHSTEER_DIRECTIONS": json.dumps(dirs), "TRUTHSTEER_KV_CACHE_GIB": "1"}
    with running_server(env) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=600)


HEADS = {"direction": "iti", "site": "attn_heads"}


def complete(client: Any, steering: list[dict[str, Any]] | None, prompt: str | list[int] = PROMPT,
             max_tokens: int = 12, logprobs: int | None = None) -> Any:
    body = {} if steering is None else {"steering": steering}
    r = client.completions.create(model="smollm2", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                  logprobs=logprobs, extra_body=body)
    return r.choices[0]


def test_head_steering_changes_outputs_and_strength_zero_equals_none(client: Any, server: str) -> None:
    card = {d["name"]: d for d in httpx.get(f"{server}/v1/directions", headers={"Authorization": f"Bearer {KEY}"})
            .json()["data"]}["iti"]
    assert card["heads"]["selected"] == [list(s) for s in SELECTED] and card["layers"] == []
    base = complete(client, None, logprobs=1)
    zero = complete(client, [{**HEADS, "strength": 0.0}], logprobs=1)
    strong = complete(client, [{**HEADS, "strength": 8.0}])
    assert zero.text == base.text and zero.logprobs.token_logprobs == base.logprobs.token_logprobs
    assert strong.text != base.text
    msgs = [{"role": "user", "content": "Where is the city of Lyon?"}]
    kw: dict[str, Any] = {"model": "smollm2", "messages": msgs, "max_tokens": 12, "temperature": 0}
    chat_base = client.chat.completions.create(**kw).choices[0].message.content
    chat = client.chat.completions.create(**kw, extra_body={"steering": [{**HEADS, "strength": 8.0}]})
    assert chat.choices[0].message.content != chat_base


@pytest.mark.parametrize("steering", [
    [{**HEADS, "strength": 4.0}],
    [{**HEADS, "strength": -6.0, "layers": [12, 14]}, {"direction": "truth", "strength": 4.0}],
], ids=["heads", "heads+residual"])
def test_next_token_logprobs_equal_an_hf_reference(client: Any, server: str, bundle_path: Path,
                                                   steering: list[dict[str, Any]]) -> None:
    from probes.extract import load_hf
    from steering.bundle import load_bundle

    model, tok = load_hf(resolve_model(None))
    ids = list(tok(PROMPT, add_special_tokens=False)["input_ids"])
    bundles = {"iti": load_bundle(bundle_path), "truth": load_bundle(DEFAULT_DIRECTIONS / "truth.safetensors")}
    truth_layers = tuple(bundles["truth"].meta.recommended_layers)
    ops = [ResolvedOp(s["direction"], "add", float(s["strength"]),
                      tuple(s.get("layers", [x for x, _ in SELECTED] if s.get("site") else truth_layers)), "all",
                      site=s.get("site", "residual")) for s in steering]
    ref = last_token_logprobs(model, ids, ops, bundles)
    got = complete(client, steering, prompt=ids, max_tokens=1, logprobs=5)
    top = sorted(got.logprobs.top_logprobs[0].values(), reverse=True)
    torch.testing.assert_close(torch.tensor(top), ref.topk(len(top)).values, rtol=0, atol=2e-3)
    assert got.text == tok.decode([int(ref.argmax())])
    base = complete(client, None, prompt=ids, max_tokens=1, logprobs=5)
    plain = sorted(base.logprobs.top_logprobs[0].values(), reverse=True)
    assert max(abs(a - b) for a, b in zip(top, plain, strict=True)) > 0.05  # far above the tolerance


def test_mixed_concurrent_batch_equals_solo_runs(client: Any) -> None:
    configs: list[list[dict[str, Any]] | None] = [
        None, [{**HEADS, "strength": 6.0}], [{"direction": "truth", "strength": 6.0}],
        [{**HEADS, "strength": -6.0, "positions": "generated"}, {"direction": "sycophancy", "strength": 3.0}],
        [{**HEADS, "strength": 3.0, "layers": [8, 20]}], None,
    ]
    solo = [complete(client, c).text for c in configs]
    with ThreadPoolExecutor(len(configs) * 2) as pool:
        together = list(pool.map(lambda c: complete(client, c).text, configs * 2))
    assert together == solo * 2
    assert len(set(solo[:5])) >= 3  # the configurations do differ


@pytest.mark.parametrize(("op", "param"), [
    ({**HEADS, "op": "ablate"}, "steering[0].op"),
    ({"direction": "truth", "site": "attn_heads"}, "steering[0].site"),
    ({"direction": "iti"}, "steering[0].site"),
    ({**HEADS, "layers": [3]}, "steering[0].layers"),
    ({**HEADS, "site": "mlp"}, "steering[0].site"),
])
def test_bad_head_steering_is_a_4xx_naming_the_parameter(server: str, op: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "smollm2", "prompt": "x", "max_tokens": 2, "steering": [op]})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["param"] == param


def test_inline_head_vectors_steer_like_the_bundle(client: Any, bundle_path: Path) -> None:
    import base64

    from steering.bundle import load_bundle

    b = load_bundle(bundle_path)
    assert b.meta.heads is not None
    vec = {str(k): base64.b64encode(b.head_vectors[k].reshape(-1).numpy().astype("<f4").tobytes()).decode()
           for k in b.meta.heads.layers}
    inline = complete(client, [{"vector": vec, "site": "attn_heads", "strength": 6.0}], logprobs=1)
    named = complete(client, [{**HEADS, "strength": 6.0}], logprobs=1)
    assert inline.text == named.text and inline.logprobs.token_logprobs == named.logprobs.token_logprobs
