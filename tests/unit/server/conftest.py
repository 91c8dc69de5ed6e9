"""The ``app_client`` fixture of the server tests: the app over a fake engine, with an API key."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.support.fakes import KEY, fake_serving


@pytest.fixture
def app_client() -> Any:
    settings = Settings(api_keys=[KEY], served_model_name="tiny", max_model_len=64, max_n=4)
    serving = fake_serving(settings)
    with TestClient(create_app(settings, serving)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        c.engine = serving.engine  # type: ignore[attr-defined]
        c.serving = serving  # type: ignore[attr-defined]
        yield c
