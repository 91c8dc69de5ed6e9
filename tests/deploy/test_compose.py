"""docker/compose.yaml against the compose-spec schema and against the other files it names."""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Any

import jsonschema

from server.settings import load_settings
from tests.support.manifests import COMPOSE, DOCKER, GRAFANA, PROMETHEUS, SERVER_CONFIG, load_yaml

SERVERS = ("truthsteer-cpu", "truthsteer-gpu")
# "host:target[:ro]" where host may be "${VAR:-default}".
_VOLUME = re.compile(r"(?:\$\{[A-Z_]+:-(?P<default>[^}]+)\}|(?P<host>[^:$]+)):(?P<target>/[^:]*)(?::ro)?")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative ones resolved against docker/), bind mounts only."""
    out = {}
    for v in service["volumes"]:
        m = _VOLUME.fullmatch(v)
        assert m, v
        host = m["default"] or m["host"]
        if host.startswith("."):
            out[m["target"]] = str((DOCKER / host).resolve())
    return out


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    text = (importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    validator = jsonschema.Draft202012Validator(json.loads(text))
    assert [e.message for e in validator.iter_errors(_compose())] == []
    broken = {**_compose(), "services": {"truthsteer-cpu": {"image": "x", "portz": ["8000"]}}}
    assert not validator.is_valid(broken)


def test_services_and_profiles() -> None:
    services = _compose()["services"]
    assert sorted(services) == ["grafana", "prometheus", "truthsteer-cpu", "truthsteer-gpu"]
    assert services["truthsteer-cpu"]["profiles"] == ["cpu"]
    assert services["truthsteer-gpu"]["profiles"] == ["gpu"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["cpu", "gpu"]
    assert services["truthsteer-cpu"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert services["truthsteer-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert (DOCKER.parent / services["truthsteer-gpu"]["build"]["dockerfile"]).is_file()
    gpu = services["truthsteer-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["driver"] == "nvidia" and gpu[0]["capabilities"] == ["gpu"]


def test_server_port_config_and_healthcheck_agree_with_the_settings() -> None:
    settings = load_settings(SERVER_CONFIG)
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    for name in SERVERS:
        svc = _compose()["services"][name]
        assert svc["ports"] == ["127.0.0.1:${TRUTHSTEER_HOST_PORT:-8000}:8000"]
        assert svc["environment"]["TRUTHSTEER_CONFIG"] == "/etc/truthsteer/config.yaml"
        assert svc["environment"]["TRUTHSTEER_API_KEYS"].startswith("${TRUTHSTEER_API_KEYS:?")
        assert _mounts(svc)["/etc/truthsteer/config.yaml"] == str(SERVER_CONFIG)
        assert _mounts(svc)["/var/lib/truthsteer/directions"] == str(DOCKER.parent / "directions")
        assert [str(d) for d in settings.directions] == ["/var/lib/truthsteer/directions"]
        assert "http://127.0.0.1:8000/health" in " ".join(svc["healthcheck"]["test"])
        assert svc["restart"] == "unless-stopped"
        assert "model-cache:/var/cache/truthsteer" in svc["volumes"]


def test_prometheus_scrapes_the_server_alias_on_the_server_port() -> None:
    services = _compose()["services"]
    (job,) = [j for j in load_yaml(PROMETHEUS)["scrape_configs"] if j["job_name"] == "truthsteer"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    for name in SERVERS:
        assert services[name]["networks"]["default"]["aliases"] == [host]
    assert int(port) == load_settings(SERVER_CONFIG).port
    assert job["metrics_path"] == "/metrics"
    mounts = _mounts(services["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == str(PROMETHEUS)
    rule_files = load_yaml(PROMETHEUS)["rule_files"]
    assert [mounts[f"/etc/prometheus/{f}"] for f in rule_files] == [str(PROMETHEUS.parent / f) for f in rule_files]


def test_grafana_mounts_the_provisioning_and_dashboards_folders() -> None:
    mounts = _mounts(_compose()["services"]["grafana"])
    assert mounts == {"/etc/grafana/provisioning": str(GRAFANA / "provisioning"),
                      "/var/lib/grafana/dashboards": str(GRAFANA / "dashboards")}
    assert sorted(p.name for p in (GRAFANA / "provisioning").iterdir()) == ["dashboards", "datasources"]
    env = _compose()["services"]["grafana"]["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / home.rsplit("/", 1)[1]).is_file()
