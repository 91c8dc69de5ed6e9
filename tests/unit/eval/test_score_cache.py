"""eval.score_cache: per-question scores keyed by (model, format, fields), merged atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.score_cache import ScoreCache


def test_score_cache_keys_by_model_format_and_fields(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path, "qwen", "chat")
    assert cache.get({"s": 1}) == {}
    assert cache.put({"s": 1}, {3: {"MC1": 1.0}}) == {3: {"MC1": 1.0}}
    assert cache.put({"s": 1}, {1: {"MC1": 0.0}, 3: {"MC1": 0.5}}) == {1: {"MC1": 0.0}, 3: {"MC1": 0.5}}
    assert ScoreCache(tmp_path, "qwen", "chat").get({"s": 1}) == {1: {"MC1": 0.0}, 3: {"MC1": 0.5}}
    for other in (ScoreCache(tmp_path, "smol", "chat"), ScoreCache(tmp_path, "qwen", "primer")):
        assert other.get({"s": 1}) == {}
    assert cache.get({"s": 2}) == {} and cache.get({}) == {}
    assert not list(tmp_path.glob("*.tmp"))
    # a file whose stored key differs from the one asked for is refused, never read as scores
    cache.path({"s": 2}).write_text(cache.path({"s": 1}).read_text())
    with pytest.raises(ValueError, match="stored for"):
        cache.get({"s": 2})
