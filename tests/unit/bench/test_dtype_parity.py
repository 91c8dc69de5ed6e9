"""bench.dtype_parity's comparison on fixed toy runs (exact values)."""

from __future__ import annotations

import pytest

from bench.dtype_parity import compare


def run(tokens: list[str], lps: list[float], scores: list[float], stmt: list[float]) -> dict[str, object]:
    return {"chats": [{"tokens": tokens, "logprobs": lps, "probe_scores": {"truth": scores}}],
            "statements": [{"truth": s} for s in stmt]}


def test_differences_count_only_positions_both_runs_share() -> None:
    a = run(["a", "b", "c", "d"], [-0.1, -0.2, -0.3, -5.0], [0.5, 0.6, 0.7, 0.0], [0.9, 0.1])
    b = run(["a", "b", "x", "y"], [-0.1, -0.25, -0.5, -0.1], [0.5, 0.65, 0.6, 1.0], [0.8, 0.15])
    got = compare(a, b)
    assert got["tokens_equal_before_divergence"] == 0.5  # 2 of 4 tokens before the first divergence
    assert got["max_logprob_diff"] == pytest.approx(0.2)  # positions 0-2 (the divergent one shares its prefix)
    assert got["max_token_probe_diff"] == pytest.approx(0.1)
    assert got["max_statement_probe_diff"] == pytest.approx(0.1)
