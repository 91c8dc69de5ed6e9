"""Per-request streaming measurements and their summary (pure, testable)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets (seconds) of a Poisson process: cumulative exponential gaps, first at 0."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return [float(x) for x in np.cumsum(gaps)]
