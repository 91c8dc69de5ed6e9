"""Grafana dashboards and provisioning: valid JSON, unique ids, provisioned datasource, known metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.manifests import (
    DASHBOARDS,
    GRAFANA,
    dashboard_exprs,
    exported,
    load_json,
    load_yaml,
    metric_names,
    panels,
    to_promql,
)

PROVISIONED = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]


def test_three_dashboards_with_distinct_uids_and_titles() -> None:
    boards = [load_json(p) for p in DASHBOARDS]
    assert sorted(b["uid"] for b in boards) == ["truthsteer-service", "truthsteer-steering", "truthsteer-truthfulness"]
    assert len({b["title"] for b in boards}) == 3


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panel_ids_unique_and_every_panel_queries_the_provisioned_datasource(path: Path) -> None:
    board = load_json(path)
    ps = list(panels(board))
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {board['uid']}"
    (ds,) = PROVISIONED
    for p in ps:
        assert p["targets"], p["title"]
        for ref in [p["datasource"], *(t["datasource"] for t in p["targets"])]:
            assert ref == {"type": ds["type"], "uid": ds["uid"]}, p["title"]
    for var in board["templating"]["list"]:
        assert var["datasource"] == {"type": ds["type"], "uid": ds["uid"]}


def test_every_metric_in_a_dashboard_is_exported_by_the_server() -> None:
    names = exported()
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used = set().union(*(metric_names(e) for _, _, e in exprs))
    unknown = sorted(used - names)
    assert unknown == []
    # The dashboards cover the whole metric surface except the per-choice histogram internals.
    assert {n.removesuffix("_bucket") for n in used if n.endswith("_bucket")} == {
        "truthsteer_request_duration_seconds", "truthsteer_time_to_first_token_seconds",
        "truthsteer_inter_token_latency_seconds", "truthsteer_completion_length_tokens", "truthsteer_probe_score"}


def test_every_expression_maps_to_plain_promql() -> None:
    for board, title, expr in dashboard_exprs():
        assert "$" not in to_promql(expr), (board, title)


def test_dashboard_provider_loads_the_folder_compose_mounts() -> None:
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "truthsteer.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    (ds,) = PROVISIONED
    assert ds["url"] == "http://prometheus:9090"
