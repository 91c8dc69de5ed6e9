"""Default steering, inline vectors and the live registry through the HTTP app, on the toy engine.

The toy engine (tests/support/toy_engine.py) runs the real worker runtime, so a completion's text is
the exact steered output of every step: two requests steer identically iff their texts are equal.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.protocol import CompletionRequest
from server.serving import Serving
from server.settings import Settings
from steering.bundle import DirectionBundle, save_bundle
from steering.engine import PreparedEngine
from steering.model_info import ModelInfo
from tests.support.tiny import INFO, make_bundle
from tests.support.toy_engine import ToyEngine, ToyTokenizer

KEY, ADMIN = "sk-user", "sk-admin"
TRUTH = make_bundle("truth", seed=3, probe=False)
OTHER = make_bundle("other", seed=4, probe=False)
ON = {"layers": [1, 2], "strength": 2.0}


def finish(s: Serving, plan: Any) -> None:
    """Run a built plan's engine requests to the end (what a completion route does)."""
    async def drain() -> None:
        for job in plan.jobs:
            async for _ in s.generate(job, [], "completions"):
                pass

    asyncio.run(drain())


def client(**settings: Any) -> TestClient:
    s = Settings(served_model_name="tiny", max_model_len=64, **settings)
    engine = ToyEngine([TRUTH], s.max_directions, s.inline_slots)
    serving = Serving(s, engine, PreparedEngine("/models/tiny", INFO, {"truth": TRUTH}, {}), ToyTokenizer())
    c = TestClient(create_app(s, serving))
    c.serving = serving  # type: ignore[attr-defined]
    return c


def renamed(b: DirectionBundle, name: str) -> DirectionBundle:
    return DirectionBundle(meta=b.meta.model_copy(update={"name": name}), vectors=b.vectors)


def upload(b: DirectionBundle, tmp: Path, **extra: Any) -> dict[str, Any]:
    path = save_bundle(b, tmp / f"{b.name}.safetensors")
    return {"data": base64.b64encode(path.read_bytes()).decode(), **extra}


def inline(b: DirectionBundle) -> dict[str, Any]:
    return {"vector": {str(k): b.vectors[k].tolist() for k in ON["layers"]}, "strength": ON["strength"]}


def complete(c: TestClient, steering: list[dict[str, Any]] | None, prompt: str = "abc", **kw: Any) -> Any:
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "max_tokens": 3}
    if steering is not None:
        body["steering"] = steering
    return c.post("/v1/completions", json=body, **kw)


def text(r: Any) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def test_default_steering_applies_unless_the_request_opts_out() -> None:
    default = [{"direction": "truth", **ON}]
    with client(default_steering=default) as c:
        m = c.serving.metrics.default_steering_requests  # type: ignore[attr-defined]
        implicit, explicit, out = text(complete(c, None)), text(complete(c, default)), text(complete(c, []))
        assert implicit == explicit != out
        assert m._value.get() == 1
        with client() as plain:
            assert text(complete(plain, None)) == out
        listed = c.get("/v1/directions").json()["default_steering"]
        assert [(d["direction"], d["layers"], d["strength"]) for d in listed] == [("truth", [1, 2], 2.0)]
    with pytest.raises(ValueError, match=r"default_steering\[0\]\.direction"):
        client(default_steering=[{"direction": "nope"}])


def test_pushed_and_inline_vectors_steer_like_the_start_up_bundle_and_never_share_its_cache(tmp_path: Path) -> None:
    with client() as c:
        truth = text(complete(c, [{"direction": "truth", **ON}]))
        r = c.post("/v1/directions", json=upload(renamed(TRUTH, "live"), tmp_path))
        assert r.status_code == 200 and r.json()["slot"] == 0
        assert text(complete(c, [{"direction": "live", **ON}])) == truth
        assert text(complete(c, [inline(TRUTH)])) == truth
        other = text(complete(c, [inline(OTHER)]))
        assert other != truth
        cards = {d["name"]: d["live"] for d in c.get("/v1/directions").json()["data"]}
        assert cards == {"truth": False, "live": True}
        assert c.post("/v1/directions", json=upload(renamed(OTHER, "live"), tmp_path)).json()["error"]["code"] == \
            "direction_exists"
        r = c.post("/v1/directions", json=upload(renamed(OTHER, "live"), tmp_path, replace=True))
        assert r.status_code == 200
        assert text(complete(c, [{"direction": "live", **ON}])) == other
        salts = [p.get("cache_salt") for p, _, _ in c.serving.engine.requests]  # type: ignore[attr-defined]
        assert len(set(salts)) == len(salts) == 5  # truth, live v1, inline truth, inline other, live v2
        assert c.delete("/v1/directions/live").json() == {"object": "direction", "name": "live", "deleted": True}
        err = complete(c, [{"direction": "live"}]).json()["error"]
        assert err["param"] == "steering[0].direction" and "unknown direction" in err["message"]


def test_registry_capacity_and_slots_held_by_unfinished_requests(tmp_path: Path) -> None:
    with client(max_directions=1) as c:
        assert c.post("/v1/directions", json=upload(renamed(TRUTH, "a"), tmp_path)).status_code == 200
        full = c.post("/v1/directions", json=upload(renamed(OTHER, "b"), tmp_path))
        assert full.status_code == 409 and full.json()["error"]["code"] == "registry_full"
        s: Serving = c.serving  # type: ignore[attr-defined]
        plan = s.build(CompletionRequest(model="tiny", prompt="x", steering=[{"direction": "a", **ON}]))
        c.delete("/v1/directions/a")  # the unfinished request still holds slot 0
        held = c.post("/v1/directions", json=upload(renamed(OTHER, "b"), tmp_path))
        assert held.status_code == 409 and held.json()["error"]["code"] == "registry_full"
        finish(s, plan)
        assert c.post("/v1/directions", json=upload(renamed(OTHER, "b"), tmp_path)).status_code == 200
    with client(max_directions=0) as off:
        r = off.post("/v1/directions", json=upload(renamed(TRUTH, "a"), tmp_path))
        assert r.status_code == 409 and "max_directions=0" in r.json()["error"]["message"]


def test_inline_vectors_in_flight_are_capped() -> None:
    with client(inline_slots=1) as c:
        s: Serving = c.serving  # type: ignore[attr-defined]
        plan = s.build(CompletionRequest(model="tiny", prompt="x", steering=[inline(TRUTH)]))
        r = complete(c, [inline(OTHER)])
        assert r.status_code == 429 and r.json()["error"]["code"] == "inline_capacity"
        assert r.json()["error"]["param"] == "steering"
        finish(s, plan)
        assert complete(c, [inline(OTHER)]).status_code == 200
        assert s.steering.inline_in_flight == 0
        long = complete(c, [inline(OTHER)], prompt="x" * 70)  # rejected after its vectors were admitted
        assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
        gc.collect()
        assert s.steering.inline_in_flight == 0


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"data": "%%%"}, 400, "data", "invalid_bundle"),
    ({"data": base64.b64encode(b"not a bundle").decode()}, 400, "data", "invalid_bundle"),
    ({"data": base64.b64encode(b"GGUF....").decode()}, 400, "name", "invalid_value"),
    ({"data": "", "format": "zip"}, 400, "format", "invalid_value"),
])
def test_bad_uploads_name_the_parameter(body: dict[str, Any], status: int, param: str, code: str) -> None:
    with client() as c:
        err = c.post("/v1/directions", json=body).json()["error"]
        assert (err["param"], err["code"]) == (param, code), err


def test_uploads_are_validated_against_the_served_model(tmp_path: Path) -> None:
    alien = make_bundle("alien", info=ModelInfo("other", INFO.hidden_size, INFO.num_layers, "LlamaForCausalLM",
                                                 "sha256:other"), probe=False)
    with client() as c:
        err = c.post("/v1/directions", json=upload(alien, tmp_path)).json()["error"]
        assert err["param"] == "data" and "model.fingerprint" in err["message"] and str(tmp_path) not in err["message"]
        err = c.post("/v1/directions", json=upload(renamed(TRUTH, "x"), tmp_path, name="y")).json()["error"]
        assert err["param"] == "name"
        err = c.post("/v1/directions", json=upload(TRUTH, tmp_path)).json()["error"]
        assert (err["param"], err["code"]) == ("name", "direction_exists")
        assert c.delete("/v1/directions/truth").json()["error"]["code"] == "direction_static"
        assert c.delete("/v1/directions/nope").status_code == 404


def test_only_admin_keys_change_the_registry(tmp_path: Path) -> None:
    with client(api_keys=[KEY], admin_api_keys=[ADMIN]) as c:
        body = upload(renamed(TRUTH, "live"), tmp_path)
        assert c.post("/v1/directions", json=body).status_code == 401
        r = c.post("/v1/directions", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
        assert c.delete("/v1/directions/live", headers={"Authorization": f"Bearer {KEY}"}).status_code == 403
        assert c.post("/v1/directions", json=body, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        steer = [{"direction": "live", **ON}]
        assert text(complete(c, steer, headers={"Authorization": f"Bearer {KEY}"})) == \
            text(complete(c, steer, headers={"Authorization": f"Bearer {ADMIN}"}))


def test_concurrent_registry_changes_never_change_a_running_request(tmp_path: Path) -> None:
    """Requests on a direction that is replaced, deleted and re-added meanwhile (each request runs
    three steps and re-reads the tables at each) produce exactly their solo run's output for the
    vectors they were admitted with."""
    versions = {"truth": renamed(TRUTH, "live"), "other": renamed(OTHER, "live")}
    with client(max_directions=2) as c:
        c.serving.engine.step_delay_s = 0.01  # type: ignore[attr-defined]
        solo = {(p, v): text(complete(c, [inline(b)], prompt=p)) for p in ("p0", "p1", "p2") for v, b in
                versions.items()}
        bodies = {v: upload(b, tmp_path / v if (tmp_path / v).mkdir() is None else tmp_path, replace=True)
                  for v, b in versions.items()}
        stop = threading.Event()
        pushed: list[int] = []

        def churn() -> None:
            rng = random.Random(0)
            while not stop.is_set():
                if rng.random() < 0.1:  # deleted, and back with the next push: a short window of 400s
                    c.delete("/v1/directions/live")
                pushed.append(c.post("/v1/directions", json=bodies[rng.choice(list(bodies))]).status_code)

        def one(i: int) -> tuple[str, str | None]:
            p = f"p{i % 3}"
            r = complete(c, [{"direction": "live", "strength": ON["strength"], "layers": ON["layers"]}], prompt=p)
            if r.status_code == 400:  # deleted at that moment
                assert r.json()["error"]["param"] == "steering[0].direction"
                return p, None
            return p, text(r)

        c.post("/v1/directions", json=bodies["truth"])
        with ThreadPoolExecutor(6) as pool:
            churner = pool.submit(churn)
            results = list(pool.map(one, range(60)))
            stop.set()
            churner.result()
    outputs = [(p, t) for p, t in results if t is not None]
    assert len(outputs) >= 30 and 200 in pushed, (len(outputs), len(results))
    for p, t in outputs:
        assert t in (solo[(p, "truth")], solo[(p, "other")]), p
    assert {t == solo[(p, "truth")] for p, t in outputs} == {True, False}  # both versions were served
