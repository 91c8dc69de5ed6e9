"""eval.truthfulqa_gen on a fake API: truthful answers by ROUGE-1, pooled answer perplexity under
the unsteered model, paired gains, and the cache that keeps answers apart from option scores."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from eval.client import Scored
from eval.data import MCItem
from eval.score_cache import ScoreCache
from eval.truthfulqa_gen import gen_fields, generated, markdown, sample

TRUE, FALSE = "No, the moon is rock", "Yes, the moon is cheese"


class FakeApi:
    """Steered requests (field ``s``) answer truthfully, unsteered ones falsely; question "q2"
    gets an empty answer when unsteered. Every answer token scores -1 except under ``bad``."""

    def __init__(self) -> None:
        self.generated: list[tuple[str, dict[str, Any]]] = []
        self.scored: list[dict[str, Any]] = []

    async def generate(self, prompt: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
        self.generated.append((prompt, extra))
        if "s" in extra:
            return {"text": f" {TRUE}\n"}
        return {"text": "" if prompt == "q2" else FALSE}

    async def score(self, ctx: list[str], cont: list[str], extra: dict[str, Any], desc: str = "") -> list[Scored]:
        self.scored.append(extra)
        return [Scored([-1.0] * len(c.split()) if c == TRUE else [-2.0] * len(c.split())) for c in cont]


def item() -> MCItem:
    return MCItem("Is the moon cheese?", {"a": 1}, {"a": 1}, None, (TRUE,), (FALSE,))


def test_each_fold_compares_none_with_its_choice_paired_and_cached(tmp_path: Path) -> None:
    api = FakeApi()
    cache = ScoreCache(tmp_path, "m", "chat")
    items, ctxs, qids, fold_of = [item()] * 3, ["q0", "q1", "q2"], [10, 11, 500], [1, 1, 2]
    chosen = {1: ("ITI", {"s": 1}), 2: ("ITI", {"s": 2})}
    got = asyncio.run(generated(api, items, ctxs, qids, fold_of, chosen, cache, None))  # type: ignore[arg-type]
    one, two = got
    assert (one.fold, one.chosen, one.gain.n) == (1, "ITI", 2)
    assert (one.truthful_none.value, one.truthful_chosen.value, one.gain.value, one.gain.se) == (0.0, 1.0, 1.0, 0.0)
    assert one.ppl_none == pytest.approx(math.exp(2.0)) and one.ppl_chosen == pytest.approx(math.exp(1.0))
    # fold 2's unsteered answer is empty: untruthful, and no tokens for its perplexity
    assert (two.truthful_none.value, two.truthful_chosen.value) == (0.0, 1.0) and math.isnan(two.ppl_none)
    assert all(extra == {} for extra in api.scored)  # fluency is measured unsteered
    assert all(extra["stop"] == ["\n"] for _, extra in api.generated)
    assert len(api.generated) == 6
    # answers are cached under their own key, never the MC key of the same fields
    assert sorted(cache.get(gen_fields({"s": 1}, 48))) == [10, 11] and cache.get({"s": 1}) == {}
    again = asyncio.run(generated(api, items, ctxs, qids, fold_of, chosen, cache, None))  # type: ignore[arg-type]
    assert again == got and len(api.generated) == 6
    table = markdown(got, 48)
    assert "| 1 | ITI | 2 | 0.000 ± 0.000 | 1.000 ± 0.000 | +1.000 ± 0.000 | 7.39 | 2.72 |" in table


def test_sample_is_seeded_ordered_and_whole_when_asked() -> None:
    idx = list(range(100, 140))
    picked = sample(idx, 10, seed=3)
    assert len(picked) == 10 and picked == sorted(picked) and set(picked) <= set(idx)
    assert picked == sample(idx, 10, seed=3) and picked != sample(idx, 10, seed=4)
    assert sample(idx, None, 0) == idx and sample(idx, 99, 0) == idx
