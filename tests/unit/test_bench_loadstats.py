import itertools
import math

import pytest

from bench.loadstats import RequestTiming, percentile, poisson_arrivals, summarize


def test_timing_ttft_and_itl() -> None:
    t = RequestTiming(start=1.0, chunk_times=(1.5, 1.75, 2.25), tokens=3)
    assert t.ttft == 0.5
    assert t.itls() == [0.25, 0.5]


def test_summarize_exact() -> None:
    a = RequestTiming(0.0, (0.1, 0.2, 0.4), 3)
    b = RequestTiming(0.0, (0.3, 0.4), 2)
    s = summarize([a, b], wall=2.0)
    assert s["tokens_per_s"] == 2.5
    assert s["ttft_p50_ms"] == pytest.approx(200.0)  # median of 100 and 300 ms
    # ITLs 100, 200, 100 ms: median 100, p99 = 100 + 0.98 * (200 - 100)
    assert s["itl_p50_ms"] == pytest.approx(100.0)
    assert s["itl_p99_ms"] == pytest.approx(198.0)


def test_percentile_empty_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def test_poisson_arrivals_seeded_and_increasing() -> None:
    x = poisson_arrivals(50, rate=4.0, seed=0)
    assert x == poisson_arrivals(50, rate=4.0, seed=0)
    assert x[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(x))
    assert x != poisson_arrivals(50, rate=4.0, seed=1)


def test_ratios_to_plain_vllm_skip_unsupported() -> None:
    from bench.loadreport import ratios

    m = lambda tps: {"tokens_per_s": tps}  # noqa: E731
    res = {"plain vLLM": {"c=1": m(10.0), "c=8": m(40.0)},
           "probes on (2)": {"c=1": m(9.5), "c=8": m(38.0)},
           "DoLa": {"unsupported": "unsupported (400)"}}
    assert ratios(res) == {"plain vLLM": {"c=1": 1.0, "c=8": 1.0}, "probes on (2)": {"c=1": 0.95, "c=8": 0.95}}


def test_poisson_shape_is_seeded_and_mixed() -> None:
    from bench.loadgen import poisson_shape

    a, b = poisson_shape(20, 2.0, (8, 16, 32), seed=0), poisson_shape(20, 2.0, (8, 16, 32), seed=0)
    assert a == b
    assert a.concurrency is None
    assert {r.max_tokens for r in a.requests} == {8, 16, 32}
