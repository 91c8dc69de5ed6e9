"""``create_app`` on the fake engine: the metadata routes, auth and malformed bodies, the start-up
heap freeze, and cancelling the work of a client that went away."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.serving import Serving
from server.settings import Settings
from tests.support.fakes import fake_serving


def test_the_start_up_heap_is_frozen_once_the_engine_it_starts_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.utils.gc_utils

    settings = Settings(served_model_name="tiny", max_model_len=64)
    events: list[str] = []

    def start(_settings: Settings) -> Serving:
        events.append("engine started")
        return fake_serving(settings)

    monkeypatch.setattr(Serving, "start", staticmethod(start))
    monkeypatch.setattr(vllm.utils.gc_utils, "freeze_gc_heap", lambda: events.append("heap frozen"))
    with TestClient(create_app(settings)) as c:
        assert c.get("/health").status_code == 200
    assert events == ["engine started", "heap frozen"]
    events.clear()
    with TestClient(create_app(settings, start(settings))):  # an injected Serving: the caller's process
        pass
    assert events == ["engine started"]

def test_models_directions_health(app_client: Any) -> None:
    assert app_client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    d = app_client.get("/v1/directions").json()["data"][0]
    assert d["name"] == "truth" and d["recommended_layers"] == [0, 1] and d["probe_layer"] == 0
    assert app_client.get("/health", headers={"Authorization": ""}).json() == {"status": "ok"}

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

def test_client_disconnect_cancels_the_work_and_its_engine_requests() -> None:
    from server.app import until_disconnect
    from server.errors import APIError

    class Gone:
        def __init__(self) -> None:
            self.polls = 0

        async def is_disconnected(self) -> bool:
            self.polls += 1
            return self.polls >= 2

    aborted: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            aborted.append("engine request aborted")  # what Serving.generate's finally does

    async def main() -> None:
        with pytest.raises(APIError) as e:
            await until_disconnect(Gone(), work(), poll_s=0.01)  # type: ignore[arg-type]
        assert e.value.status == 499
        await asyncio.sleep(0)

    asyncio.run(main())
    assert aborted == ["engine request aborted"]

def test_directions_list_each_layers_stats(app_client: Any) -> None:
    card = app_client.get("/v1/directions").json()["data"][0]
    bundle = app_client.serving.prepared.bundles["truth"]
    assert card["layer_stats"] == {k: v.model_dump() for k, v in bundle.meta.layer_stats.items()}
    assert set(card["layer_stats"]) == {str(k) for k in bundle.meta.layers}
