"""deploy.yaml: every object against the Kubernetes schemas, and the objects against each other."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.settings import load_settings
from tests.support.manifests import COMPOSE, DEPLOY, exported, k8s, load_all_yaml, load_yaml

# Custom resources (Prometheus Operator) have no schema in kubernetes-validate.
CRDS = {"PodMonitor"}


def _container() -> dict[str, Any]:
    (c,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    container: dict[str, Any] = c
    return container


def _settings(tmp_path: Any) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(k8s("ConfigMap", "truthsteer-config")["data"]["config.yaml"])
    return load_settings(path)


def test_objects() -> None:
    kinds = [(d["kind"], d["metadata"]["name"]) for d in load_all_yaml(DEPLOY)]
    assert kinds == [("Namespace", "truthsteer"), ("ConfigMap", "truthsteer-config"),
                     ("Secret", "truthsteer-api-keys"), ("PersistentVolumeClaim", "truthsteer-models"),
                     ("Deployment", "truthsteer"), ("Service", "truthsteer"), ("PodMonitor", "truthsteer"),
                     ("HorizontalPodAutoscaler", "truthsteer")]
    assert {d["metadata"].get("namespace") for d in load_all_yaml(DEPLOY)[1:]} == {"truthsteer"}


@pytest.mark.parametrize("doc", [d for d in load_all_yaml(DEPLOY) if d["kind"] not in CRDS],
                         ids=lambda d: d["kind"])
def test_object_matches_its_schema_strictly(doc: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec" if "spec" in broken else "metadata"]["unknownField"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_settings_in_the_configmap_load_and_match_the_container(tmp_path: Any) -> None:
    settings = _settings(tmp_path)
    c = _container()
    assert settings.host == "0.0.0.0"
    assert c["ports"] == [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["TRUTHSTEER_CONFIG"]["value"] == "/etc/truthsteer/config.yaml"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] == "/etc/truthsteer"
    assert mounts["directions"] == str(settings.directions[1])
    assert str(settings.directions[0]) == "/opt/truthsteer/directions"  # the image's WORKDIR + directions/
    # One pod's engine spans tensor_parallel_size GPUs of its node.
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(settings.tensor_parallel_size)
    assert c["resources"]["requests"]["nvidia.com/gpu"] == str(settings.tensor_parallel_size)


def test_api_keys_come_from_the_secret_as_a_json_list() -> None:
    ref = {e["name"]: e for e in _container()["env"]}["TRUTHSTEER_API_KEYS"]["valueFrom"]["secretKeyRef"]
    secret = k8s("Secret", ref["name"])
    keys = yaml.safe_load(secret["stringData"][ref["key"]])
    assert isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)


def test_probes_hit_health_on_the_named_port() -> None:
    c = _container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600


def test_volumes_refer_to_objects_in_the_file() -> None:
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert {m["name"] for m in _container()["volumeMounts"]} == set(volumes)
    assert k8s("ConfigMap", volumes["config"]["configMap"]["name"])
    assert volumes["directions"]["configMap"]["optional"] is True  # made by the user from their bundles
    assert k8s("PersistentVolumeClaim", volumes["models"]["persistentVolumeClaim"]["claimName"])
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_service_and_pod_monitor_select_the_deployment_pods() -> None:
    deployment = k8s("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = k8s("Service")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    monitor = k8s("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == labels
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def test_autoscaler_targets_the_deployment_on_an_exported_metric() -> None:
    hpa = k8s("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", k8s("Deployment")["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] in exported()


def test_image_is_the_gpu_image_compose_builds() -> None:
    assert _container()["image"] == load_yaml(COMPOSE)["services"]["truthsteer-gpu"]["image"]
