"""The deployment files and what tests read out of them (paths, YAML/JSON loaders, PromQL)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from server.metrics import Metrics, exported_names

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST = DOCKER / "prometheus" / "alerts_test.yml"
SERVER_CONFIG = DOCKER / "truthsteer" / "config.yaml"
GRAFANA = DOCKER / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DEPLOY = ROOT / "deploy.yaml"
DIRECTIONS = ("truth", "sycophancy")

_METRIC = re.compile(r"\btruthsteer_[A-Za-z0-9_]+")
# Grafana's macros and this repo's dashboard variables, as a Prometheus query sees them.
GRAFANA_MACROS = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "2m", "$probe": ".*"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def exported() -> set[str]:
    """Every sample name the server exports for the shipped directions and probes.

    Rejections are labelled by error code, which is only known when one happens, so that family
    gets its first child here as it would on the first 4xx.
    """
    metrics = Metrics(DIRECTIONS, DIRECTIONS)
    metrics.rejected.labels("invalid_request_error")
    return exported_names(metrics)


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every PromQL target of every dashboard."""
    return [
        (path.name, p["title"], t["expr"])
        for path in DASHBOARDS
        for p in panels(load_json(path))
        for t in p.get("targets", [])
    ]


def alert_exprs() -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for g in load_yaml(ALERTS)["groups"] for r in g["rules"]]


def to_promql(expr: str, **macros: str) -> str:
    """A dashboard expression with Grafana's macros replaced, ready for Prometheus' API;
    ``macros`` overrides values by name without the ``$`` (``__rate_interval="5m"``)."""
    values = {**GRAFANA_MACROS, **{f"${k}": v for k, v in macros.items()}}
    for macro in sorted(values, key=len, reverse=True):
        expr = expr.replace(macro, values[macro])
    if "$" in expr:
        raise ValueError(f"unhandled Grafana variable in {expr!r}")
    return expr


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in load_all_yaml(DEPLOY) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    if len(found) != 1:
        raise LookupError(f"deploy.yaml has {len(found)} {kind} objects named {name}")
    return found[0]
