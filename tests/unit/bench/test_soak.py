"""The soak's pieces on fakes: scenario outcomes, spot checks, memory sampling, verdict, report."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import httpx

from bench.soak import SCENARIOS, SPOT, Ctx, _bad, _spot, _stream
from bench.soak_report import Sample, Tally, growth, rss_of, verdict, write_report


def _ctx(handler: Any, solo: list[str] | None = None) -> Ctx:
    return Ctx("http://t", "tiny", httpx.Client(transport=httpx.MockTransport(handler)), random.Random(0),
               solo or [])


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def test_bad_inputs_must_be_400_in_the_error_shape() -> None:
    err = {"error": {"message": "m", "type": "invalid_request_error", "param": "prompt", "code": None}}
    assert _bad(_ctx(lambda r: httpx.Response(400, json=err))) == (400, None)
    status, problem = _bad(_ctx(lambda r: httpx.Response(200, json={"choices": []})))
    assert status == 200 and problem is not None


def test_streams_need_done_and_a_hang_up_reads_two_lines_only() -> None:
    chunk = json.dumps({"choices": [{"index": 0, "text": " a"}]})
    full = _ctx(lambda r: httpx.Response(200, content=_sse(chunk, chunk, "[DONE]")))
    assert _stream("completions", False)(full) == (200, None)
    cut = _ctx(lambda r: httpx.Response(200, content=_sse(chunk, '{"error": {}}')))
    status, problem = _stream("completions", False)(cut)
    assert status == 200 and problem is not None and "no [DONE]" in problem
    assert _stream("completions", True)(cut) == (0, None)


def test_spot_checks_compare_with_the_solo_result() -> None:
    tally = Tally()
    same = _ctx(lambda r: httpx.Response(200, json={"choices": [{"text": "solo", "message": {"content": "solo"}}]}),
                ["solo"] * len(SPOT))
    assert _spot(same, tally) == (200, None) and tally.mismatches == []
    other = _ctx(lambda r: httpx.Response(200, json={"choices": [{"text": "x", "message": {"content": "x"}}]}),
                 ["solo"] * len(SPOT))
    _spot(other, tally)
    assert len(tally.mismatches) == 1 and "'x' != solo 'solo'" in tally.mismatches[0]


def test_the_mix_covers_every_feature_the_soak_promises() -> None:
    assert {"steer add", "steer ablate", "steer clamp", "probes", "dola", "contrast", "gated steering", "gated dola",
            "abstain", "n=2", "stream chat", "stream completion", "hang up mid-stream", "bad input", "probe score",
            "metadata", "chat", "completion"} == set(SCENARIOS)


def test_rss_of_this_process_and_a_child(tmp_path: Path) -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"  # an interpreter, not a fresh fork
        api, engine = rss_of(os.getpid())
        assert api > 10 and engine > 1  # MB: this interpreter with pytest, and the sleeping child
    finally:
        child.kill()
        child.wait()


def test_growth_is_measured_after_the_warm_up_and_decides_the_verdict() -> None:
    samples = [Sample(0, 100, 1000), Sample(60, 200, 2000), Sample(120, 202, 2000), Sample(180, 204, 2080)]
    g = growth(samples, warmup_s=60)
    assert g["api"] == 204 / 200 - 1 and g["engine"] == 2080 / 2000 - 1
    tally = Tally()
    tally.add("chat", 200)
    assert verdict(tally, g, 0.05) == []
    tally.add("chat", 503)
    tally.add("bad input", 200, "expected a 400")
    failed = verdict(tally, {"api": 0.06, "engine": None}, 0.05)
    assert failed == ["1 server errors (5xx)", "1 unexpected responses",
                      "api RSS grew 6.0% after warm-up (target < 5%)",
                      "engine RSS growth not measured (too few samples after warm-up)"]


def test_report_files(tmp_path: Path) -> None:
    tally = Tally()
    tally.add("chat", 200)
    tally.add("hang up mid-stream", 0)
    samples = [Sample(0, 100, 1000), Sample(60, 100, 1000), Sample(120, 101, 1010)]
    meta = {"date": "2026-12-04 16:00 UTC", "machine": "m", "duration_s": 120, "workers": 2, "warmup_s": 60,
            "sample_s": 60, "spot_checks": 0, "note": "short run"}
    failed = write_report(tmp_path / "soak", meta, tally, samples, 0.05)
    assert failed == []
    md = (tmp_path / "soak.md").read_text()
    assert "**Verdict: all targets met**" in md and "| hang up mid-stream | client hung up | 1 |" in md
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "soak.json").read_text())["growth"] == {"api": 101 / 100 - 1,
                                                                          "engine": 1010 / 1000 - 1}
