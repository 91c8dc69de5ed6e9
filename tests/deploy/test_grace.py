"""Shutdown timing across files: the server's drain (shutdown_grace_s) ends before compose or the
kubelet kill it (stop_grace_period, terminationGracePeriodSeconds)."""

from __future__ import annotations

import re
from typing import Any

from server.settings import load_settings
from tests.support.manifests import COMPOSE, SERVER_CONFIG, k8s, load_yaml

MARGIN_S = 5  # engine shutdown and process exit after the drain


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert m and duration, duration
    return 60 * int(m[1] or 0) + int(m[2] or 0)


def test_compose_waits_longer_than_the_drain() -> None:
    grace = load_settings(SERVER_CONFIG).shutdown_grace_s
    for name in ("truthsteer-cpu", "truthsteer-gpu"):
        svc = load_yaml(COMPOSE)["services"][name]
        assert _seconds(svc["stop_grace_period"]) >= grace + MARGIN_S
        assert svc["restart"] == "unless-stopped"  # an engine death exits 1: compose restarts it


def test_kubernetes_waits_longer_than_the_drain(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(k8s("ConfigMap", "truthsteer-config")["data"]["config.yaml"])
    grace = load_settings(path).shutdown_grace_s
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= grace + MARGIN_S
    assert pod.get("restartPolicy", "Always") == "Always"


def test_the_default_drain_fits_the_manifests() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    default = load_settings().shutdown_grace_s
    assert default + MARGIN_S <= pod["terminationGracePeriodSeconds"]
