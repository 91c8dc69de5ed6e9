"""The real server under faults: the engine process killed mid-stream, SIGTERM with a stream in
flight, a burst beyond the admission limit, and schemathesis with every check."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.serve import server_process

pytestmark = pytest.mark.engine
MODEL = "smollm2"
BASE_ENV = {"TRUTHSTEER_SERVED_MODEL_NAME": MODEL, "TRUTHSTEER_KV_CACHE_GIB": "1"}
# long enough that no stream can finish before the engine-death test kills the worker (a 400-token
# stream once did, on a quiet machine); the context is 2048 tokens
LONG = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1800, "ignore_eos": True, "temperature": 0}


def _worker(pid: int) -> Any:
    """The process that runs the model: vLLM's worker (multiprocessing executor), or the engine
    core itself where it runs the model in-process."""
    import psutil

    kids = psutil.Process(pid).children(recursive=True)
    for name in ("Worker", "EngineCore"):
        named = [k for k in kids if name in k.name() or name in " ".join(k.cmdline())]
        if named:
            return named[0]
    raise AssertionError([(k.pid, k.name()) for k in kids])


def _stream_lines(base: str, body: dict[str, Any]) -> Iterator[str]:
    with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                yield line[6:]


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def test_engine_death_errors_every_request_then_the_process_exits_1() -> None:
    env = {**BASE_ENV, "TRUTHSTEER_ENGINE_DEATH_EXIT_S": "6"}
    with server_process(env) as (base, proc, log), concurrent.futures.ThreadPoolExecutor(2) as pool:
        plain = pool.submit(httpx.post, f"{base}/v1/completions", json=LONG, timeout=300)
        lines = _stream_lines(base, LONG)
        first = json.loads(next(lines))
        assert first["choices"][0]["text"]
        import psutil

        engine = psutil.Process(proc.pid).children(recursive=True)
        _worker(proc.pid).kill()  # SIGKILL, as the OOM killer would
        rest = list(lines)
        assert json.loads(rest[-1])["error"]["code"] == "engine_dead" and "[DONE]" not in rest
        r = plain.result()
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        again = httpx.post(f"{base}/v1/completions", json=LONG, timeout=30)
        assert again.status_code == 503 and again.json()["error"] == {
            "message": "the inference engine died; the server is restarting", "type": "service_unavailable",
            "param": None, "code": "engine_dead"}
        assert httpx.get(f"{base}/health", timeout=10).status_code == 503
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert "truthsteer_engine_dead 1.0" in metrics
        assert _wait_exit(proc, 60) == 1, log.read_text()[-3000:]
        assert not [p for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no engine outlives it


def test_sigterm_drains_a_stream_in_flight_then_exits_0() -> None:
    env = {**BASE_ENV, "TRUTHSTEER_SHUTDOWN_GRACE_S": "240"}
    with server_process(env) as (base, proc, log):
        lines = _stream_lines(base, {**LONG, "max_tokens": 48})
        assert json.loads(next(lines))["choices"][0]["text"]
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        health = httpx.get(f"{base}/health", timeout=10)
        assert health.status_code == 503 and health.json()["error"]["code"] == "shutting_down"
        refused = httpx.post(f"{base}/v1/completions", json=LONG, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        rest = list(lines)
        assert rest[-1] == "[DONE]"
        texts = [json.loads(x)["choices"][0]["text"] for x in rest[:-1]]
        assert len(texts) == 47  # the other 47 of 48 tokens, one per chunk
        assert _wait_exit(proc, 120) == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def small_server() -> Iterator[str]:
    env = {**BASE_ENV, "TRUTHSTEER_MAX_QUEUED_REQUESTS": "4", "TRUTHSTEER_MAX_MODEL_LEN": "96",
           "TRUTHSTEER_DEFAULT_MAX_TOKENS": "4", "TRUTHSTEER_MAX_N": "2"}
    with server_process(env) as (base, _proc, _log):
        yield base


def test_a_burst_beyond_the_queue_limit_gets_429s_and_the_admitted_requests_complete(small_server: str) -> None:
    # A long prompt (a slower first token) and a barrier (all 32 sent at once): the burst is queued
    # before any request leaves the queue, however busy the machine is.
    prompt = "Paris, Lyon, Marseille, Toulouse, Nice, Nantes, Strasbourg and Bordeaux are cities. " * 2
    body = {"model": MODEL, "prompt": prompt + "The city of Paris is", "max_tokens": 8, "temperature": 0,
            "ignore_eos": True}
    start = threading.Barrier(32)

    def one(_i: int) -> httpx.Response:
        start.wait()
        return httpx.post(f"{small_server}/v1/completions", json=body, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, range(32)))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429} and codes.count(200) >= 4, codes
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_exceeded"
        else:
            assert r.json()["usage"]["completion_tokens"] == 8
    metrics = httpx.get(f"{small_server}/metrics").text
    assert f'truthsteer_admission_refused_total{{reason="queue_full"}} {codes.count(429)}.0' in metrics


# Switched off, with the reason: positive_data_acceptance (ST202, "schema-valid request
# rejected"): the server enforces constraints that JSON Schema cannot state, all answered with a
# documented 400 naming the parameter: prompt tokens + max_tokens within the context (needs the
# tokenizer), token ids below the vocabulary size, layer ranges with end > start inside the loaded
# bundles, direction and probe names of the loaded bundles, decoding specs checked against the model.
# Not yet in the schema although it could be: an empty steering ``layers`` list, and ``decoding``'s
# fields (protocol.py takes ``decoding`` as a free object and checks it in serving.py).
EXCLUDED_CHECKS = ("positive_data_acceptance",)


def test_schemathesis_with_every_check_finds_no_failure(small_server: str, tmp_path: Any) -> None:
    st = [sys.executable, "-m", "schemathesis.cli", "run", f"{small_server}/openapi.json", "--checks", "all",
          "--exclude-checks", ",".join(EXCLUDED_CHECKS), "--seed", "7", "--max-examples", "12",
          "--request-timeout", "120", "--workers", "1", "--no-color"]
    out = subprocess.run(st, capture_output=True, text=True, timeout=1200, cwd=tmp_path)  # its .schemathesis/ there
    assert out.returncode == 0, out.stdout[-6000:]
