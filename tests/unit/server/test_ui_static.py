"""The /ui playground's files: served without a key (its API calls need one), off by a setting,
shipped as package data, and within the project's size rule."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from server.ui import STATIC

ROOT = Path(__file__).resolve().parents[3]


def test_ui_is_served_without_a_key_and_keeps_the_query_on_redirect() -> None:
    client = TestClient(create_app(Settings(api_keys=["sk-x"])))  # no lifespan: no engine
    r = client.get("/ui?prompt=a%20b&steer=truth:%2B2&autorun=1", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/?prompt=a%20b&steer=truth:%2B2&autorun=1"
    page = client.get("/ui/")
    assert page.status_code == 200 and '<script type="module" src="js/main.js">' in page.text
    js = client.get("/ui/js/main.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/v1/models").status_code == 401  # the API itself still needs the key


def test_ui_can_be_switched_off() -> None:
    client = TestClient(create_app(Settings(ui_enabled=False)))
    assert client.get("/ui/").status_code == 404
    assert client.get("/ui", follow_redirects=False).status_code == 404


def test_every_module_the_page_imports_exists_and_nothing_is_fetched_from_elsewhere() -> None:
    files = [p for p in STATIC.rglob("*") if p.is_file()]
    for p in files:
        text = p.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f"{p.name} references an external URL"
        if p.suffix == ".js":
            assert len(text.splitlines()) < 400, p.name
            for target in re.findall(r'from "(\./[^"]+)"', text):
                assert (p.parent / target).is_file(), f"{p.name} imports missing {target}"


def test_static_files_are_package_data() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["server.ui"]
    shipped = {p.relative_to(STATIC.parent) for p in STATIC.rglob("*") if p.is_file()}
    covered = {p.relative_to(STATIC.parent) for pat in patterns for p in STATIC.parent.glob(pat) if p.is_file()}
    assert shipped and shipped <= covered
