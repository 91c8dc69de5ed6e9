"""``/v1/probes/score`` with framed probes, and ``/v1/directions`` cards, on the fake engine."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from probes.frames import FRAMES
from server.app import create_app
from server.settings import Settings
from steering.bundle import DirectionBundle, ProbeMeta
from tests.support.fakes import KEY, fake_logit, fake_serving, sig
from tests.support.tiny import make_bundle


def framed_bundle() -> DirectionBundle:
    b = make_bundle("truth")
    meta = b.meta.model_copy(update={
        "probe": ProbeMeta(layer=0, bias=0.1, frame=FRAMES["chat"]),
        "recommended_steering": [{"direction": "truth", "strength": 2.0, "layers": [1, 2]}],
        "recommended_steering_notes": "measured on toy data",
        "metrics": {"recommended.switch_rate": 0.25},
    })
    return DirectionBundle(meta=meta, vectors=b.vectors, probe_weight=b.probe_weight)


@pytest.fixture
def client() -> Any:
    settings = Settings(api_keys=[KEY], served_model_name="tiny", max_model_len=256)
    serving = fake_serving(settings, framed_bundle())
    with TestClient(create_app(settings, serving)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        c.engine = serving.engine  # type: ignore[attr-defined]
        yield c


def test_a_framed_probe_reads_the_last_token_of_its_frame(client: Any) -> None:
    r = client.post("/v1/probes/score", json={"model": "tiny", "input": ["abc", "Paris is in France."]})
    assert r.status_code == 200, r.text
    framed = [f"<user>Is the following statement true or false?\n\n{t}<assistant>" for t in ("abc", "Paris is in France.")]
    sent = [p["prompt_token_ids"] for p, _, _ in client.engine.requests]
    assert sent == [[ord(c) % 1000 for c in f] for f in framed]  # the engine saw the framed texts
    data = r.json()["data"]
    for d, f, raw in zip(data, framed, ("abc", "Paris is in France."), strict=True):
        assert d["scores"]["truth"] == pytest.approx(sig(fake_logit(len(f), len(f) - 1)))
        assert d["tokens"] == len(raw)  # the text's own tokens
    assert r.json()["usage"]["prompt_tokens"] == sum(len(f) for f in framed)


def test_mean_reduction_reads_the_text_unframed(client: Any) -> None:
    r = client.post("/v1/probes/score", json={"model": "tiny", "input": "abcd", "reduce": "mean"})
    assert r.status_code == 200, r.text
    assert client.engine.requests[-1][0]["prompt_token_ids"] == [ord(c) for c in "abcd"]
    assert r.json()["data"][0]["scores"]["truth"] == pytest.approx(sum(sig(fake_logit(4, p)) for p in range(4)) / 4)


def test_direction_cards_carry_frame_layer_aurocs_and_recommendations(client: Any) -> None:
    card = client.get("/v1/directions").json()["data"][0]
    assert card["probe_frame"] == {"name": "chat", "kind": "chat", "template": FRAMES["chat"].template, "answer": ""}
    assert card["recommended_steering"] == [{"direction": "truth", "strength": 2.0, "layers": [1, 2]}]
    assert card["recommended_steering_notes"] == "measured on toy data"
    assert card["metrics"]["recommended.switch_rate"] == 0.25
    assert card["layer_stats"]["0"]["pos_mean"] == 1.5 and card["layer_stats"]["0"]["auroc"] is None


def test_405_lists_every_method_of_a_path_served_by_several_routers(client: Any) -> None:
    r = client.request("TRACE", "/v1/directions")
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}
    assert client.request("TRACE", "/v1/completions").headers["allow"] == "POST"


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
