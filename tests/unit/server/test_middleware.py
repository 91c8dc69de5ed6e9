"""The body-size limit and the request metrics (``server/middleware.py``) on the fake engine."""

from __future__ import annotations

import json
from typing import Any


def test_body_limit_without_a_declared_length_and_request_metrics_of_a_stream(app_client: Any) -> None:

    def chunks(n: int) -> Any:  # no content-length: the client sends the body chunked
        body = json.dumps({"model": "tiny", "prompt": "x" * n, "max_tokens": 2}).encode()
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    headers = {"content-type": "application/json"}
    r = app_client.post("/v1/completions", content=chunks(2 << 20), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = app_client.post("/v1/completions", content=chunks(10), headers=headers)  # a small chunked body is read whole
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    with app_client.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 3,
                                                            "stream": True}) as s:
        assert s.status_code == 200 and list(s.iter_lines())[-2:] == ["data: [DONE]", ""]
    text = app_client.get("/metrics").text
    assert 'truthsteer_requests_total{endpoint="completions",status="413"} 1.0' in text
    assert 'truthsteer_requests_total{endpoint="completions",status="200"} 2.0' in text
    assert 'truthsteer_request_duration_seconds_count{endpoint="completions"} 3.0' in text
    assert 'truthsteer_requests_in_flight{endpoint="completions"} 0.0' in text
