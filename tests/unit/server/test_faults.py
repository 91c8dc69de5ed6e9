"""Faults and overload on a scripted engine: engine death, admission control, draining, the
OpenAPI document's error responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.lifecycle import Lifecycle
from server.settings import Settings
from tests.support.fault_fakes import ScriptedEngine, scripted_serving

BODY = {"model": "tiny", "prompt": "abc", "max_tokens": 3}


def _settings(**kw: Any) -> Settings:
    return Settings(served_model_name="tiny", max_model_len=64, **kw)


def _events(text: str) -> list[Any]:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in text.splitlines() if line.startswith("data: ")]


def test_engine_death_ends_streams_with_an_error_event_then_refuses_with_json_503() -> None:
    engine = ScriptedEngine(die_after=2)
    settings = _settings()
    app = create_app(settings, scripted_serving(settings, engine))
    stops: list[int] = []
    app.state.lifecycle.bind_stop(lambda: stops.append(app.state.lifecycle.exit_code))
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={**BODY, "stream": True})
        events = _events(r.text)
        assert r.status_code == 200 and [e["choices"][0]["text"] for e in events[:2]] == [" x", " x"]
        assert events[2:] == [{"error": {"message": "the inference engine died; the server is restarting",
                                         "type": "service_unavailable", "param": None, "code": "engine_dead"}}]
        for url, body in (("/v1/completions", BODY), ("/v1/chat/completions",
                                                      {"model": "tiny", "messages": [{"role": "user", "content": "x"}]})):
            r = c.post(url, json=body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        assert c.get("/health").json()["error"]["code"] == "engine_dead"
        metrics = c.get("/metrics").text
        assert "truthsteer_engine_dead 1.0" in metrics
        assert "truthsteer_engine_dead_errors_total 3.0" in metrics  # the stream and the two refused
        app.state.lifecycle.tick(engine)
        assert stops == []  # 503s for engine_death_exit_s first
        app.state.lifecycle._since -= settings.engine_death_exit_s
        app.state.lifecycle.tick(engine)
        assert stops == [1]  # then the process is told to stop, exit code 1


def test_a_request_in_flight_when_the_engine_dies_gets_a_json_503() -> None:
    engine = ScriptedEngine(die_after=1)
    settings = _settings()
    with TestClient(create_app(settings, scripted_serving(settings, engine))) as c:
        r = c.post("/v1/completions", json=BODY)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "engine_dead"


def test_an_unexpected_failure_is_a_json_500_and_the_server_stays_up() -> None:
    engine = ScriptedEngine()
    settings = _settings()
    serving = scripted_serving(settings, engine)

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("boom")

    with TestClient(create_app(settings, serving), raise_server_exceptions=False) as c:
        serving.build = broken  # type: ignore[method-assign]
        r = c.post("/v1/completions", json=BODY)
        assert r.status_code == 500
        assert r.json()["error"] == {"message": "internal error (RuntimeError); see the server log",
                                     "type": "server_error", "param": None, "code": "internal_error"}
        assert c.get("/health").status_code == 200


def test_lifecycle_stops_after_a_drain_or_an_engine_death_as_configured() -> None:
    now = [0.0]
    engine = ScriptedEngine()
    lc = Lifecycle(_settings(shutdown_grace_s=10, engine_death_exit_s=2), clock=lambda: now[0])
    stops: list[int] = []
    lc.bind_stop(lambda: stops.append(lc.exit_code))
    lc.phase = "ready"
    lc.in_flight = 1
    lc.begin_drain()
    assert lc.refusal() is not None and lc.refusal().code == "shutting_down"  # type: ignore[union-attr]
    now[0] = 9.9
    lc.tick(engine)
    assert stops == []  # still one in flight, grace not over
    lc.in_flight = 0
    lc.tick(engine)
    assert stops == [0]

    for stay_up, expected in ((False, [1]), (True, [])):
        lc = Lifecycle(_settings(engine_death_exit_s=2, exit_on_engine_death=not stay_up), clock=lambda: now[0])
        died: list[int] = []
        lc.bind_stop(lambda lc=lc, died=died: died.append(lc.exit_code))  # type: ignore[misc]
        lc.phase, lc.in_flight, now[0] = "ready", 0, 0.0
        engine.errored = True
        lc.tick(engine)
        assert lc.refusal() is not None and died == []  # dead: refuses, waits for the in-flight one
        now[0] = 2.0  # in-flight requests had their time to get the error
        lc.tick(engine)
        assert died == expected
        engine.errored = False


async def _with_app(app: Any, run: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await run(client)


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def test_requests_beyond_the_queue_limit_get_429_and_the_admitted_ones_complete() -> None:
    engine = ScriptedEngine()
    settings = _settings(max_queued_requests=2, retry_after_s=3)
    app = create_app(settings, scripted_serving(settings, engine))

    async def run(client: httpx.AsyncClient) -> None:
        engine.release = asyncio.Event()
        admitted = [asyncio.ensure_future(client.post("/v1/completions", json=BODY)) for _ in range(2)]
        await _until(lambda: engine.waiting == 2)
        over = await client.post("/v1/completions", json=BODY)
        assert over.status_code == 429 and over.headers["retry-after"] == "3"
        assert over.json()["error"]["type"] == "rate_limit_exceeded"
        assert over.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await client.get("/v1/models")).status_code == 200  # only generation is admitted
        engine.release.set()
        assert [r.status_code for r in await asyncio.gather(*admitted)] == [200, 200]
        assert (await client.post("/v1/completions", json=BODY)).status_code == 200  # the queue is free again
        metrics = (await client.get("/metrics")).text
        assert 'truthsteer_admission_refused_total{reason="queue_full"} 1.0' in metrics
        assert 'truthsteer_requests_total{endpoint="completions",status="429"} 1.0' in metrics
        assert "truthsteer_queued_requests 0.0" in metrics

    asyncio.run(_with_app(app, run))


def test_per_key_concurrency_limit() -> None:
    engine = ScriptedEngine()
    settings = _settings(api_keys=["a", "b"], max_concurrent_per_key=1)
    app = create_app(settings, scripted_serving(settings, engine))

    def key(k: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {k}"}

    async def run(client: httpx.AsyncClient) -> None:
        engine.release = asyncio.Event()
        first = asyncio.ensure_future(client.post("/v1/completions", json=BODY, headers=key("a")))
        await _until(lambda: engine.waiting == 1)
        again = await client.post("/v1/completions", json=BODY, headers=key("a"))
        assert again.status_code == 429 and again.json()["error"]["code"] == "concurrency_limit_exceeded"
        other = asyncio.ensure_future(client.post("/v1/completions", json=BODY, headers=key("b")))
        await _until(lambda: engine.waiting == 2)
        engine.release.set()
        assert [(await first).status_code, (await other).status_code] == [200, 200]
        assert (await client.post("/v1/completions", json=BODY, headers=key("a"))).status_code == 200

    asyncio.run(_with_app(app, run))


def test_draining_refuses_new_work_while_a_stream_in_flight_finishes() -> None:
    engine = ScriptedEngine()
    settings = _settings(shutdown_grace_s=30)
    app = create_app(settings, scripted_serving(settings, engine))
    lc: Lifecycle = app.state.lifecycle
    stops: list[int] = []
    lc.bind_stop(lambda: stops.append(lc.exit_code))

    async def run(client: httpx.AsyncClient) -> None:
        engine.release = asyncio.Event()

        async def stream() -> str:
            async with client.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as r:
                return "".join([chunk async for chunk in r.aiter_text()])

        in_flight = asyncio.ensure_future(stream())
        await _until(lambda: engine.waiting == 1)
        lc.begin_drain()
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["error"]["code"] == "shutting_down"
        refused = await client.post("/v1/completions", json=BODY)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        lc.tick(engine)
        assert stops == []  # the stream is still in flight
        engine.release.set()
        assert _events(await in_flight)[-1] == "[DONE]"
        lc.tick(engine)
        assert stops == [0]

    asyncio.run(_with_app(app, run))


def test_openapi_documents_every_error_status_and_no_422() -> None:
    settings = _settings()
    app = create_app(settings, scripted_serving(settings, ScriptedEngine()))
    doc = app.openapi()
    codes = {(path, method): set(op["responses"]) for path, ops in doc["paths"].items() for method, op in ops.items()}
    generation = {"200", "400", "401", "404", "413", "429", "500", "503"}
    assert codes[("/v1/completions", "post")] == generation
    assert codes[("/v1/chat/completions", "post")] == generation
    assert codes[("/v1/probes/score", "post")] == generation
    assert codes[("/v1/models", "get")] == {"200", "401", "500", "503"}
    assert codes[("/health", "get")] == {"200", "503"}
    err = doc["paths"]["/v1/completions"]["post"]["responses"]["429"]
    assert err["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "Retry-After" in err["headers"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@pytest.mark.parametrize(("method", "path", "allow"), [("TRACE", "/v1/completions", "POST"),
                                                       ("DELETE", "/health", "GET")])
def test_405_names_the_allowed_methods(method: str, path: str, allow: str) -> None:
    settings = _settings()
    with TestClient(create_app(settings, scripted_serving(settings, ScriptedEngine()))) as c:
        r = c.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow
        assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [{"prompt": []}, {"prompt": ""}, {"prompt": [[]]}, {"prompt": [""]},
                                  {"prompt": [-1]}, {"stop": ["a"] * 5}])
def test_constraints_the_schema_states_are_enforced_as_400(body: dict[str, Any]) -> None:
    settings = _settings()
    with TestClient(create_app(settings, scripted_serving(settings, ScriptedEngine()))) as c:
        r = c.post("/v1/completions", json={**BODY, **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] in ("prompt", "stop") or r.json()["error"]["param"].startswith("prompt")

