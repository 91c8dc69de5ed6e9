"""Prometheus' own tools on the config and rules, and every dashboard query against a real Prometheus.

The live part scrapes the server's real metrics registry (``server.metrics.Metrics``, rendered by
``Metrics.render`` as ``/metrics`` does) over HTTP; each scrape first records one step of a fixed,
mixed traffic pattern. ``test_live_server.py`` does the same against the running server.
"""

from __future__ import annotations

import math
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.metrics import Metrics
from tests.support.manifests import (
    ALERTS,
    ALERTS_TEST,
    DIRECTIONS,
    PROMETHEUS,
    alert_exprs,
    dashboard_exprs,
    exported,
    metric_names,
    to_promql,
)
from tests.support.prom import MISSING, PROMETHEUS_BIN, PROMTOOL, Prometheus, running_prometheus

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=MISSING)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def test_alert_rules_use_only_exported_metrics() -> None:
    names = exported()
    rules = alert_exprs()
    assert len(rules) >= 6
    for alert, expr in rules:
        used = metric_names(expr)
        assert used <= names, (alert, sorted(used - names))
    assert {a for a, e in rules if not metric_names(e)} == {"TruthsteerDown"}  # up{job="truthsteer"}


@needs_promtool
def test_promtool_check_config_and_rules() -> None:
    r = _promtool("check", "config", str(PROMETHEUS))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in r.stdout


@needs_promtool
def test_alert_rules_unit_tests() -> None:
    r = _promtool("test", "rules", str(ALERTS_TEST))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard expression (as recording rules)."""
    exprs = [to_promql(e) for _, _, e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump(rules))
    r = _promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "bad", "expr": "sum(rate(truthsteer_requests_total[5m])"}]}]}))
    assert _promtool("check", "rules", str(path)).returncode != 0


def record_traffic_step(m: Metrics, step: int) -> None:
    """One step of a fixed mixed load, recorded the way the server records requests."""
    for endpoint in ("chat", "completions"):
        m.requests.labels(endpoint, "200").inc(3)
        m.latency.labels(endpoint).observe(0.4 + 0.1 * (step % 5))
        m.ttft.labels(endpoint).observe(0.08)
        m.itl.observe(0.03)
        m.prompt_tokens.inc(40)
        m.completion_tokens.inc(16)
        m.completion_length.observe(16)
    m.requests.labels("completions", "400").inc()
    m.rejected.labels("invalid_steering").inc()
    m.requests.labels("chat", "500").inc(step % 2)
    m.requests.labels("probes_score", "200").inc()
    m.latency.labels("probes_score").observe(0.05)
    m.in_flight.labels("chat").set(step % 3)
    m.steered_requests.inc(2)
    m.steering_ops.labels("truth", "add").inc()
    m.steering_ops.labels("sycophancy", "ablate").inc()
    m.intervention_tokens.labels("truth", "steered").inc(16)
    m.decoding_requests.labels("dola").inc()
    m.intervention_tokens.labels("dola", "contrasted").inc(16)
    m.probe_requests.inc()
    for probe in DIRECTIONS:
        for score in (0.1, 0.45, 0.8, 0.95):
            m.probe_score.labels(probe).observe(score)
    m.probe_flagged.labels("truth").inc()
    m.abstentions.labels("truth").inc(step % 2)
    m.engine_running.set(4)
    m.engine_waiting.set(step % 4)
    m.kv_usage.set(0.25)
    m.prefix_hits.inc(20)
    m.prefix_queries.inc(40)


@pytest.fixture
def exporter() -> Iterator[str]:
    metrics = Metrics(DIRECTIONS, DIRECTIONS)
    lock = threading.Lock()
    steps = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            with lock:
                record_traffic_step(metrics, steps[0])
                steps[0] += 1
                body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_every_panel_query(prom: Prometheus) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    return {(b, t, e): prom.query(to_promql(e)) for b, t, e in dashboard_exprs()}


@pytest.mark.skipif(PROMETHEUS_BIN is None, reason=MISSING)
def test_every_dashboard_query_returns_finite_data_from_a_real_prometheus(exporter: str, tmp_path: Path) -> None:
    with running_prometheus(tmp_path, exporter) as prom:
        prom.wait_for_samples("truthsteer", 8, timeout=60)
        results = run_every_panel_query(prom)
        empty = [k for k, v in results.items() if not v]
        assert empty == []
        not_finite = [(k, s["metric"]) for k, v in results.items() for s in v if not math.isfinite(float(s["value"][1]))]
        assert not_finite == []
        # Exact values the traffic pattern fixes.
        assert [float(s["value"][1]) for s in prom.query('truthsteer_kv_cache_usage_ratio{job="truthsteer"}')] == [0.25]
        hit = prom.query(to_promql(
            "sum(rate(truthsteer_prefix_cache_hit_tokens_total[$__rate_interval])) "
            "/ clamp_min(sum(rate(truthsteer_prefix_cache_query_tokens_total[$__rate_interval])), 1e-9)"))
        assert float(hit[0]["value"][1]) == pytest.approx(0.5)
        flagged = prom.query(to_promql(
            'sum by (probe) (rate(truthsteer_probe_flagged_total{probe=~"$probe"}[$__rate_interval])) '
            '/ clamp_min(sum by (probe) (rate(truthsteer_probe_score_count{probe=~"$probe"}[$__rate_interval])), 1e-9)'))
        assert {s["metric"]["probe"]: float(s["value"][1]) for s in flagged} == pytest.approx(
            {"truth": 0.25, "sycophancy": 0.0})
        # The rules loaded and are evaluated (none fires on this traffic within seconds: all have `for`).
        rules = prom.query('ALERTS{alertstate="firing"}')
        assert rules == []
