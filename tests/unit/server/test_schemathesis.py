"""Property-based fuzzing of every operation in ``/openapi.json``: no input ever yields a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from server.app import create_app
from server.serving import Serving
from server.settings import Settings
from steering.engine import PreparedEngine
from tests.support.fakes import KEY, FakeEngine, FakeTokenizer
from tests.support.tiny import INFO, make_bundle

_settings = Settings(api_keys=[KEY], served_model_name="tiny", max_model_len=64, max_n=4)
_serving = Serving(_settings, FakeEngine(), PreparedEngine("/models/tiny", INFO, {"truth": make_bundle("truth")}, {}),
                   FakeTokenizer())
APP = create_app(_settings, _serving)
schema = schemathesis.openapi.from_dict(APP.openapi())


@pytest.fixture(scope="module")
def client() -> Any:
    with TestClient(APP) as c:
        yield c


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gives_a_server_error(case: Any, client: Any) -> None:
    kw = case.as_transport_kwargs(base_url="", headers={"Authorization": f"Bearer {KEY}"})
    r = client.request(kw["method"], kw["url"], headers=kw.get("headers"), params=kw.get("params"),
                       json=kw.get("json"), content=kw.get("data"))
    assert r.status_code < 500, (kw, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
