"""Opt-in packaged models (``make model-qwen``) through the real server and the ``openai`` client.

An opt-in model serves its own bundles (``directions/<alias>/``): they must load against the
converted folder, score what the extractor that trained them sees, and steer. Each alias with a
bundle folder is a parameter; it is skipped (saying how to opt in) where its packages are not
installed, as on CI, where only the default model is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from steering.engine import DEFAULT_DIRECTIONS
from steering.errors import ModelError
from steering.models import DEFAULT_MODEL, PACKAGED_MODELS, model_sources
from tests.support.serve import running_server

pytestmark = pytest.mark.engine
API_KEY = "sk-test-opt-in"
SERVED = "opt-in"
OPT_IN = [a for a in sorted(PACKAGED_MODELS) if a != DEFAULT_MODEL and (DEFAULT_DIRECTIONS / a).is_dir()]


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module", params=OPT_IN)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    alias: str = request.param
    try:
        model_sources(PACKAGED_MODELS[alias])
    except ModelError as e:
        pytest.skip(f"opt-in model not installed: {e}")
    # float32: the extractor parity below is exact up to kernel rounding only in float32 (bfloat16
    # serving is compared with float32 by bench/dtype_parity.py, docs/truth-domains.md#bfloat16-serving)
    env = {"TRUTHSTEER_MODEL": alias, "TRUTHSTEER_SERVED_MODEL_NAME": SERVED, "TRUTHSTEER_API_KEYS": f'["{API_KEY}"]',
           "TRUTHSTEER_DTYPE": "float32"}
    with running_server(env, timeout_s=1800) as base:
        yield alias, base


@pytest.fixture(scope="module")
def client(served: tuple[str, str]) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{served[1]}/v1", api_key=API_KEY, max_retries=0, timeout=600)


def _shipped(alias: str) -> set[str]:
    return {p.stem for p in (DEFAULT_DIRECTIONS / alias).glob("*.safetensors")}


def _with_probe(alias: str) -> set[str]:
    """The shipped bundles that carry a probe (head-only ITI bundles steer, but score nothing)."""
    from steering.bundle import load_directory

    return {n for n, b in load_directory(DEFAULT_DIRECTIONS / alias).items() if b.meta.probe is not None}


def test_the_models_own_bundles_are_served(served: tuple[str, str]) -> None:
    alias, base = served
    r = httpx.get(f"{base}/v1/directions", headers=_auth())
    assert r.status_code == 200, r.text
    cards = {d["name"]: d for d in r.json()["data"]}
    assert set(cards) == _shipped(alias)  # never the default model's bundles
    probed = _with_probe(alias)
    assert probed
    for name, card in cards.items():
        if name in probed:
            assert card["probe_layer"] is not None and card["metrics"]["heldout_auroc"] > 0.5
        else:  # a head-only bundle: its heads, and what they were measured to do
            assert card["probe_layer"] is None and card["heads"]["selected"], name


def test_server_probe_scores_equal_the_extractors(served: tuple[str, str]) -> None:
    """The activations the bundles were trained on (HF extractor, shared-prefix path for A/B items)
    through each bundle's probe (in its frame) give ``/v1/probes/score``'s numbers."""
    import torch

    from probes import sources
    from probes.extract import last_token_activations, load_hf
    from steering.bundle import load_directory
    from steering.models import resolve_model
    from steering.vllm.probe_readout import folded_probe

    alias, base = served
    model, tok = load_hf(resolve_model(alias))
    texts = [*sources.builtin("caa_sycophancy_test", tok).texts()[:2], "The city of Paris is in France.",
             "The city of Paris is in Japan."]
    r = httpx.post(f"{base}/v1/probes/score", json={"model": SERVED, "input": texts}, headers=_auth(), timeout=600)
    assert r.status_code == 200, r.text
    got = r.json()["data"]
    bundles = load_directory(DEFAULT_DIRECTIONS / alias)
    assert set(bundles) == _shipped(alias)
    for name, b in bundles.items():
        if b.meta.probe is None:
            assert name not in got[0]["scores"]
            continue
        frame = b.meta.probe.frame  # a probe trained inside a frame is scored inside it
        framed = [frame.apply(t, tok) for t in texts] if frame is not None else texts
        acts = last_token_activations(model, tok, framed, batch_size=2, progress=False)
        w, bias = folded_probe(b)
        want = torch.sigmoid(acts[:, b.meta.probe.layer] @ w + bias).tolist()
        assert [d["scores"][name] for d in got] == pytest.approx(want, abs=2e-3), name


def test_steering_changes_greedy_output_and_strength_zero_does_not(client: Any, served: tuple[str, str]) -> None:
    direction = "truth" if "truth" in _shipped(served[0]) else sorted(_shipped(served[0]))[0]
    kw: dict[str, Any] = {"model": SERVED, "messages": [{"role": "user", "content": "Where is the city of Lyon?"}],
                          "max_tokens": 12, "temperature": 0}
    base = client.chat.completions.create(**kw)
    zero = client.chat.completions.create(**kw, extra_body={"steering": [{"direction": direction, "strength": 0}]})
    strong = client.chat.completions.create(**kw, extra_body={"steering": [{"direction": direction, "strength": 12}]})
    assert zero.choices[0].message.content == base.choices[0].message.content
    assert strong.choices[0].message.content != base.choices[0].message.content


def test_stream_carries_one_score_per_token_for_every_probe(client: Any, served: tuple[str, str]) -> None:
    names = sorted(_with_probe(served[0]))
    stream = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Is the Earth flat? Answer in one sentence."}],
        max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"probes": names},
    )
    per_token: dict[str, list[float]] = {n: [] for n in names}
    usage = None
    for ch in stream:
        usage = ch.usage or usage
        for c in ch.choices:
            for n in names:
                per_token[n] += c.model_extra["probe_scores"][n]
    assert usage is not None
    for n in names:
        assert len(per_token[n]) == usage.completion_tokens and all(0.0 <= s <= 1.0 for s in per_token[n])
