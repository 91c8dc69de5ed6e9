"""Per-request streaming measurements and their summary (pure, testable)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class RequestTiming:
    start: float  # when the request was sent (perf_counter seconds)
    chunk_times: tuple[float, ...]  # arrival of each streamed chunk that carried new tokens
    tokens: int  # completion tokens (usage)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start

    def itls(self) -> list[float]:
        """Gaps between consecutive token-carrying chunks (one token per chunk when streaming)."""
        return [b - a for a, b in itertools.pairwise(self.chunk_times)]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def summarize(timings: Sequence[RequestTiming], wall: float) -> dict[str, float]:
    """Output tokens/s over the run's wall time; TTFT and ITL p50/p99 in milliseconds."""
    done = [t for t in timings if t.chunk_times]
    ttft = [t.ttft for t in done]
    itl = [x for t in done for x in t.itls()]
    toks = sum(t.tokens for t in timings)
    return {
        "requests": float(len(timings)),
        "output_tokens": float(toks),
        "wall_s": wall,
        "tokens_per_s": toks / wall if wall > 0 else float("nan"),
        "ttft_p50_ms": 1000 * percentile(ttft, 50),
        "ttft_p99_ms": 1000 * percentile(ttft, 99),
        "itl_p50_ms": 1000 * percentile(itl, 50),
        "itl_p99_ms": 1000 * percentile(itl, 99),
    }


TAIL_KEYS = ("ttft_p99_ms", "itl_p99_ms")


def median_run(runs: Sequence[dict[str, float]]) -> dict[str, float | list[float]]:
    """The run with the median tokens/s (the lower middle one for an even count), so its latency
    figures belong to one real run, plus every run's tokens/s and tail latencies in run order
    (``rounds_tokens_per_s``, ``rounds_ttft_p99_ms``, ``rounds_itl_p99_ms``)."""
    if not runs:
        raise ValueError("no runs")
    order = sorted(range(len(runs)), key=lambda i: runs[i]["tokens_per_s"])
    out: dict[str, float | list[float]] = dict(runs[order[(len(runs) - 1) // 2]])
    out["rounds_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    for key in TAIL_KEYS:
        if all(key in r for r in runs):
            out[f"rounds_{key}"] = [r[key] for r in runs]
    return out


def rotated(items: Sequence[T], r: int) -> list[T]:
    """``items`` starting at index ``r`` (mod its length): round ``r``'s order of an interleaved run."""
    if not items:
        return []
    k = r % len(items)
    return [*items[k:], *items[:k]]


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets (seconds) of a Poisson process: cumulative exponential gaps, first at 0."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return [float(x) for x in np.cumsum(gaps)]
