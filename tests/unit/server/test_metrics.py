"""The Prometheus metrics (``server/metrics.py``) after traffic on the fake engine."""

from __future__ import annotations

from typing import Any


def test_metrics_after_traffic(app_client: Any) -> None:
    app_client.post("/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 2, "probes": ["truth"],
                                             "steering": [{"direction": "truth", "strength": 1.0}]})
    app_client.post("/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 2, "n": 99})
    text = app_client.get("/metrics").text
    assert 'truthsteer_requests_total{endpoint="completions",status="200"} 1.0' in text
    assert 'truthsteer_requests_total{endpoint="completions",status="400"} 1.0' in text
    assert 'truthsteer_steering_ops_total{direction="truth",op="add"} 1.0' in text
    assert 'truthsteer_probe_score_count{probe="truth"} 1.0' in text
    assert "truthsteer_completion_tokens_total 2.0" in text and "truthsteer_prompt_tokens_total 3.0" in text
    assert 'truthsteer_time_to_first_token_seconds_count{endpoint="completions"} 1.0' in text
    assert "truthsteer_inter_token_latency_seconds_count 1.0" in text
    assert 'truthsteer_rejected_requests_total{code="invalid_value"} 1.0' in text
