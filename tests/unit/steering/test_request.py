"""The request contract (``steering/request.py``) and the worker's step plan (``steering/vllm/step_plan.py``):
what the API writes is what the worker reads, junk is dropped per section, decoding errors answer
``invalid_decoding``, and the plan describes each request's rows once."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from steering.decoding.spec import ResolvedDecoding
from steering.request import (
    DECODING,
    EXTRA_ARGS_KEY,
    STEERING,
    CaptureRequest,
    ProbeRequest,
    build,
    from_wire,
)
from steering.spec import ResolvedGate, ResolvedOp, cache_salt, wire
from steering.vllm.step_plan import POS_GENERATED, POS_PROMPT, StepPlanner
from tests.support.fakes import KEY, fake_serving
from tests.support.toy import Req, fake_runner

OPS = (ResolvedOp("truth", "add", 2.0, (1, 2), "all"), ResolvedOp("truth", "ablate", 1.0, (3,), "generated"))
DOLA = ResolvedDecoding("dola", (1, 3), alpha=0.2, gate=ResolvedGate("truth", 0.4, None, 2, 1))


def test_what_the_builder_writes_the_worker_reads_back() -> None:
    contract = build(OPS, vectors={"inline:x": {"layers": [1], "data": b"\0" * 8}}, probes=ProbeRequest("p", True),
                     decoding=DOLA, capture=CaptureRequest("c", (0, 2), frozenset({3, 1})))
    extra = contract.extra_args()
    assert extra is not None and list(extra[EXTRA_ARGS_KEY]) == ["steering", "vectors", "probes", "decoding", "capture"]
    assert extra[EXTRA_ARGS_KEY][STEERING] == wire(OPS) and extra[EXTRA_ARGS_KEY][DECODING] == DOLA.to_wire()
    assert from_wire(extra, num_layers=4) == contract
    assert contract.cache_salt == cache_salt(OPS)
    assert build(decoding=DOLA).cache_salt is None  # decoding leaves the KV cache unchanged
    assert build().extra_args() is None and from_wire(None) is None and from_wire({"other": 1}) is None


def test_extra_args_keep_the_callers_own_and_prompts_get_the_salt() -> None:
    contract = build(OPS)
    extra = contract.extra_args({"mine": 1, EXTRA_ARGS_KEY: {"probes": {"id": "x"}}})
    assert extra == {"mine": 1, EXTRA_ARGS_KEY: {"probes": {"id": "x"}, "steering": wire(OPS)}}
    assert contract.salted("hi") == {"prompt": "hi", "cache_salt": cache_salt(OPS)}
    assert contract.salted({"prompt_token_ids": [1]})["cache_salt"] == cache_salt(OPS)
    assert build(decoding=DOLA).salted("hi") == "hi"


def test_a_malformed_section_is_dropped_and_named_the_others_stand() -> None:
    extra = {EXTRA_ARGS_KEY: {STEERING: [{"oops": 1}], DECODING: DOLA.to_wire(), "probes": {"id": 5},
                              "capture": {"id": "c", "layers": [9], "positions": [0]}}}
    contract = from_wire(extra, num_layers=4)
    assert contract is not None and contract.steering == () and contract.decoding == DOLA
    assert contract.probes is None and contract.capture is None  # a probe id that is not a string asks for nothing
    assert [section for section, _ in contract.errors] == [STEERING, "capture"]
    nan = {EXTRA_ARGS_KEY: {STEERING: [{**wire(OPS)[0], "strength": float("nan")}]}}
    assert [s for s, _ in from_wire(nan).errors] == [STEERING]  # type: ignore[union-attr]


def test_the_plan_describes_each_request_once_and_forgets_it_once() -> None:
    planner = StepPlanner(4, decoding=True)
    probed = {EXTRA_ARGS_KEY: {"probes": {"id": "p"}, DECODING: ResolvedDecoding("dola", (1,)).to_wire()}}
    reqs = [Req("a", 5, 0, 3, extra=probed), Req("b", 2, 4, 1), Req("c", 4, 2, 4)]
    plan = planner.plan(fake_runner(reqs))
    a, b, c = plan.spans
    assert (a.start, a.end, a.position, a.samples, a.split) == (0, 3, 0, False, 3)  # a partial prefill chunk
    assert (b.start, b.end, b.samples, b.split) == (3, 4, True, 3)  # a decode step
    assert (c.samples, c.split, c.rows_for(POS_PROMPT), c.rows_for(POS_GENERATED)) == (True, 6, (4, 6), (6, 8))
    assert plan.total_tokens == 8 and plan.contrast == [None, None, None]  # "a" samples nothing yet
    assert a.state.contract.probes == ProbeRequest("p") and a.state.decoding is not None
    state = a.state
    nxt = planner.plan(fake_runner([Req("a", 5, 3, 2, extra=probed)]))
    assert nxt.spans[0].state is state and nxt.contrast == [state.decoding]  # parsed once, samples now
    assert sorted(planner.requests) == ["a"]  # "b" and "c" left: forgotten


def test_gated_decoding_without_the_probe_is_refused_once() -> None:
    planner = StepPlanner(4, probe_column=lambda name: None, decoding=True)
    extra = {EXTRA_ARGS_KEY: {DECODING: DOLA.to_wire()}}
    plan = planner.plan(fake_runner([Req("g", 2, 0, 2, extra=extra)]))
    assert plan.rejected == {DECODING: 1} and plan.contrast == [None]
    assert planner.plan(fake_runner([Req("g", 2, 2, 1, extra=extra)])).rejected == {}


def _client() -> Any:
    settings = Settings(api_keys=[KEY], served_model_name="tiny", max_model_len=64, max_n=4)
    return TestClient(create_app(settings, fake_serving(settings)))


def test_decoding_errors_answer_invalid_decoding_and_steering_errors_invalid_steering() -> None:
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 2}
    with _client() as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        for decoding, param in (({"method": "dola", "premature_layers": [4]}, "decoding.premature_layers"),
                                ({"method": "dola", "alpha": -1}, "decoding.alpha"),
                                ({"method": "dola", "gate": {"probe": "nope", "below": 0.5}}, "decoding.gate.probe")):
            err = c.post("/v1/completions", json={**body, "decoding": decoding}).json()["error"]
            assert (err["code"], err["param"]) == ("invalid_decoding", param), err
        err = c.post("/v1/completions", json={**body, "steering": [{"direction": "nope"}]}).json()["error"]
        assert (err["code"], err["param"]) == ("invalid_steering", "steering[0].direction")
        metrics = c.get("/metrics").text
    assert 'truthsteer_rejected_requests_total{code="invalid_decoding"} 3.0' in metrics
