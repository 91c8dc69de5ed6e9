"""A real Prometheus (the ``prometheus`` binary) on a loopback port, for the deployment tests."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.manifests import ALERTS, PROMETHEUS, load_yaml
from tests.support.procs import free_port, running_process

PROMETHEUS_BIN = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = "needs Prometheus' binaries (Debian: apt-get install prometheus)"


def scrape_config(target: str, scrape_interval: str) -> dict[str, Any]:
    """docker/prometheus/prometheus.yml with its truthsteer job pointed at ``target``."""
    config: dict[str, Any] = load_yaml(PROMETHEUS)
    config["global"] = {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval}
    config["rule_files"] = [str(ALERTS)]
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "truthsteer"]
    jobs[0]["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = jobs
    return config


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_samples(self, job: str, n: int, timeout: float) -> None:
        """Until ``n`` successful scrapes of ``job`` are in the TSDB."""
        deadline = time.monotonic() + timeout
        expr = f'sum_over_time(up{{job="{job}"}}[10m])'
        while time.monotonic() < deadline:
            try:
                res = self.query(expr)
            except httpx.HTTPError:
                res = []
            if res and float(res[0]["value"][1]) >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus did not get {n} scrapes of {job} in {timeout} s")


@contextmanager
def running_prometheus(tmp: Path, target: str, scrape_interval: str = "1s") -> Iterator[Prometheus]:
    if PROMETHEUS_BIN is None:
        raise RuntimeError(MISSING)
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(target, scrape_interval)))
    port = free_port()
    cmd = [PROMETHEUS_BIN, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}"]
    base = f"http://127.0.0.1:{port}"
    with running_process("prometheus", cmd, f"{base}/-/ready", tmp / "prometheus.log", timeout_s=60, poll_s=0.2,
                         stop_s=20):
        yield Prometheus(base)
