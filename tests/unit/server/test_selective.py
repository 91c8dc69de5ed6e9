"""Abstention and intervention counts (``server/selective.py``) in responses and streams on the fake
engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.fakes import fake_logit, sig


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
