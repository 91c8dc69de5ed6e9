"""The real truthsteer server under a small mixed load, scraped by a real Prometheus: every query of
every Grafana panel must return data, and the counters must count exactly the requests sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.manifests import dashboard_exprs, to_promql
from tests.support.prom import MISSING, PROMETHEUS_BIN, running_prometheus
from tests.support.serve import running_server, served_probes

pytestmark = [pytest.mark.engine, pytest.mark.skipif(PROMETHEUS_BIN is None, reason=MISSING)]
KEY = "sk-deploy-test"
MODEL = "smollm2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {"TRUTHSTEER_API_KEYS": json.dumps([KEY]), "TRUTHSTEER_SERVED_MODEL_NAME": MODEL, "OMP_NUM_THREADS": "1",
           # Every scored answer counts as flagged (truth: mean below 1; sycophancy: above 0), so
           # the flag series have data.
           "TRUTHSTEER_PROBE_FLAG_THRESHOLDS": json.dumps({"truth": 1.0, "sycophancy": 0.0})}
    with running_server(env, log_path) as base:
        yield base


def send_mixed_load(base: str) -> dict[str, int]:
    """Plain, steered, probed, streamed and invalid requests; returns the status of each kind."""
    h = {"Authorization": f"Bearer {KEY}"}
    chat: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Where is Lyon?"}],
                            "max_tokens": 8, "temperature": 0}
    comp: dict[str, Any] = {"model": MODEL, "prompt": "The city of Paris is located in", "max_tokens": 8,
                            "temperature": 0}
    bodies: dict[str, tuple[str, dict[str, Any]]] = {
        "chat": ("/v1/chat/completions", chat),
        "chat_steered": ("/v1/chat/completions", {**chat, "steering": [
            {"direction": "truth", "strength": 4}, {"direction": "sycophancy", "op": "ablate"}]}),
        "chat_clamp_probes": ("/v1/chat/completions", {**chat, "probes": "all", "steering": [
            {"direction": "truth", "op": "clamp"}]}),
        "completion_probes": ("/v1/completions", {**comp, "probes": ["truth", "sycophancy"], "n": 2,
                                                  "temperature": 0.7, "seed": 1}),
        "probe_score": ("/v1/probes/score", {"model": MODEL, "input": ["Paris is in France.", "Paris is in Japan."]}),
        "unknown_direction": ("/v1/completions", {**comp, "steering": [{"direction": "nope"}]}),
    }
    status = {}
    with httpx.Client(base_url=base, headers=h, timeout=300) as c:
        for name, (path, body) in bodies.items():
            status[name] = c.post(path, json=body).status_code
        with c.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
            status["chat_stream"] = r.status_code
            r.read()
    return status


def test_every_panel_query_returns_data_for_a_real_server(server: str, tmp_path: Path) -> None:
    target = server.removeprefix("http://")
    assert httpx.get(f"{server}/metrics", timeout=10).status_code == 200  # open: metrics_require_auth false
    with running_prometheus(tmp_path, target) as prom:
        prom.wait_for_samples("truthsteer", 3, timeout=60)
        status = send_mixed_load(server)
        assert status == {"chat": 200, "chat_steered": 200, "chat_clamp_probes": 200, "completion_probes": 200,
                          "probe_score": 200, "unknown_direction": 400, "chat_stream": 200}
        prom.wait_for_samples("truthsteer", 3 + 5, timeout=60)  # scrapes after the load
        # A window that spans the whole load.
        results = {(b, t, e): prom.query(to_promql(e, __rate_interval="10m", __range="10m"))
                   for b, t, e in dashboard_exprs()}
        assert [k for k, v in results.items() if not v] == []

        def total(expr: str) -> dict[str, float]:
            return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1]) for s in prom.query(expr)}

        assert total('sum by (endpoint, status) (truthsteer_requests_total{status!="200"})') == {
            json.dumps({"endpoint": "completions", "status": "400"}): 1.0}
        assert total("sum by (endpoint) (truthsteer_requests_total)") == {
            json.dumps({"endpoint": "chat"}): 4.0, json.dumps({"endpoint": "completions"}): 2.0,
            json.dumps({"endpoint": "probes_score"}): 1.0}
        assert total("sum(truthsteer_steered_requests_total)") == {"{}": 2.0}
        assert total("sum by (direction, op) (truthsteer_steering_ops_total > 0)") == {
            json.dumps({"direction": "sycophancy", "op": "ablate"}): 1.0,
            json.dumps({"direction": "truth", "op": "add"}): 1.0,
            json.dumps({"direction": "truth", "op": "clamp"}): 1.0}
        # chat_clamp_probes (1 choice, every served probe) + completion_probes (2 choices, truth and
        # sycophancy); /v1/probes/score is not a generation and counts nothing here.
        served = served_probes(server, KEY)
        assert {"truth", "sycophancy"} <= served
        expected = {p: 3.0 if p in ("truth", "sycophancy") else 1.0 for p in served}
        assert total("sum by (probe) (truthsteer_probe_score_count)") == {
            json.dumps({"probe": p}): n for p, n in expected.items()}
        # how many of them are flagged depends on the generated text; the series exist and count choices
        flagged = total("sum by (probe) (truthsteer_probe_flagged_total)")
        assert set(flagged) == {json.dumps({"probe": p}) for p in served}
        assert all(0.0 <= v <= expected[json.loads(k)["probe"]] and v.is_integer() for k, v in flagged.items())
