import itertools
import math
from typing import Any

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


def test_median_run_keeps_one_real_run_and_every_rounds_figure() -> None:
    from bench.loadstats import median_run

    runs = [{"tokens_per_s": 30.0, "ttft_p50_ms": 1.0}, {"tokens_per_s": 10.0, "ttft_p50_ms": 2.0},
            {"tokens_per_s": 20.0, "ttft_p50_ms": 3.0}]
    assert median_run(runs) == {"tokens_per_s": 20.0, "ttft_p50_ms": 3.0, "rounds_tokens_per_s": [30.0, 10.0, 20.0]}
    # even count: the lower middle run
    assert median_run(runs[:2])["ttft_p50_ms"] == 2.0
    with pytest.raises(ValueError):
        median_run([])


def test_rotated_gives_each_round_its_own_start() -> None:
    from bench.loadstats import rotated

    assert [rotated("abc", r) for r in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert rotated([], 3) == []


def test_ratios_pair_rounds_when_both_rows_ran_them() -> None:
    from bench.loadreport import ratio_ranges, ratios

    res = {"plain vLLM": {"c=1": {"tokens_per_s": 20.0, "rounds_tokens_per_s": [10.0, 20.0, 40.0]}},
           # drift: every round 0.9 of plain vLLM's same round; the medians alone would say 1.0
           "probes on (2)": {"c=1": {"tokens_per_s": 18.0, "rounds_tokens_per_s": [9.0, 18.0, 36.0]}},
           "HF": {"c=1": {"tokens_per_s": 5.0}}}
    r = ratios(res)
    assert r["probes on (2)"] == {"c=1": 0.9}
    assert r["HF"] == {"c=1": 0.25}  # ran once: ratio of the figures
    assert ratio_ranges(res) == {"probes on (2)": {"c=1": (0.9, 0.9)}}


def test_bench_rounds_interleaves_scenarios_round_by_round(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import loadgen
    from bench.scenarios import Scenario

    calls: list[tuple[str, str]] = []

    async def fake_run(base: str, model: str, shape: loadgen.Shape, sc: Scenario) -> dict[str, float]:
        if sc.name == "rejected":
            raise loadgen.Rejected(400, "no")
        calls.append((sc.name, shape.name))
        return {"tokens_per_s": float(len(calls))}

    monkeypatch.setattr(loadgen, "run_shape", fake_run)
    monkeypatch.setattr(loadgen, "_model", lambda base: "m")
    scs = [Scenario(n, "vllm" if n == "a" else "truthsteer", lambda _i: {}) for n in ("a", "b", "rejected")]
    shapes = [loadgen.closed_shape(1, 1, 4), loadgen.closed_shape(8, 8, 4)]
    out: dict[str, Any] = {}
    loadgen.bench_rounds({"vllm": "u1", "truthsteer": "u2"}, scs, shapes, 2, out)
    assert out["rejected"]["unsupported"] == "unsupported (400)"
    # the support check first, then per shape: an untimed warm-up of each scenario, round 1 a b,
    # round 2 b a
    assert [c[0] for c in calls] == ["a", "b"] + ["a", "b", "a", "b", "b", "a"] * 2
    assert [c[1] for c in calls[2:]] == (["c=1 warm-up"] * 2 + ["c=1"] * 4 + ["c=8 warm-up"] * 2 + ["c=8"] * 4)
    assert out["a"]["c=1"]["rounds_tokens_per_s"] == [5.0, 8.0]
    assert out["b"]["c=8"]["rounds_tokens_per_s"] == [12.0, 13.0]


def test_warm_shape_covers_the_shapes_prompts_and_batch_size_with_short_outputs() -> None:
    from bench import loadgen

    closed = loadgen.closed_shape(32, 40, 64)
    w = loadgen.warm_shape(closed)
    assert w.concurrency == 32 and [r.prompt for r in w.requests] == [r.prompt for r in closed.requests[:32]]
    assert {r.max_tokens for r in w.requests} == {4}
    open_loop = loadgen.poisson_shape(20, 2.0, (2, 16), seed=0)
    w = loadgen.warm_shape(open_loop)
    assert w.concurrency == 8 and len(w.requests) == 8 and all(r.at == 0.0 for r in w.requests)
    assert [r.max_tokens for r in w.requests] == [min(r.max_tokens, 4) for r in open_loop.requests[:8]]


def test_tail_ratios_pair_each_rounds_p99_with_plain_vllms_same_round() -> None:
    from bench.loadreport import tail_ratios
    from bench.loadstats import median_run

    plain = median_run([{"tokens_per_s": 10.0, "ttft_p99_ms": 100.0, "itl_p99_ms": 50.0},
                        {"tokens_per_s": 20.0, "ttft_p99_ms": 400.0, "itl_p99_ms": 10.0},
                        {"tokens_per_s": 30.0, "ttft_p99_ms": 200.0, "itl_p99_ms": 20.0}])
    ours = median_run([{"tokens_per_s": 10.0, "ttft_p99_ms": 120.0, "itl_p99_ms": 50.0},
                       {"tokens_per_s": 20.0, "ttft_p99_ms": 200.0, "itl_p99_ms": 30.0},
                       {"tokens_per_s": 30.0, "ttft_p99_ms": 300.0, "itl_p99_ms": 10.0}])
    assert ours["rounds_ttft_p99_ms"] == [120.0, 200.0, 300.0]
    # TTFT per round 1.2, 0.5, 1.5 -> median 1.2; ITL 1.0, 3.0, 0.5 -> median 1.0
    assert tail_ratios({"plain vLLM": {"p": plain}, "x": {"p": ours}, "HF": {"p": {"tokens_per_s": 1.0}}}) == {
        "x": {"p": {"ttft_p99_ms": 1.2, "itl_p99_ms": 1.0}}}
