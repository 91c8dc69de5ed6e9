"""eval.truthfulqa_cv: the two-fold choice on fixed toy numbers, with exact expected values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eval.truthfulqa_cv import cross_validate, folds, load_configs, mean_se


def test_folds_split_the_v0_questions_at_409() -> None:
    f = folds(817)
    assert f.count(1) == 409 and f.count(2) == 408
    assert f[408] == 1 and f[409] == 2


def test_each_fold_reports_the_configuration_chosen_on_the_other() -> None:
    fold_of = [1, 1, 2, 2]
    scores = {"none": [0.0, 1.0, 0.0, 1.0], "A": [1.0, 1.0, 0.0, 0.0], "B": [0.0, 1.0, 1.0, 1.0]}
    first, second = cross_validate(scores, fold_of)
    # fold 1 is reported with the choice made on fold 2 (B: 1.0 there)
    assert (first.fold, first.chosen, first.train_value) == (1, "B", 1.0)
    assert (first.chosen_value.value, first.baseline.value, first.gain.value, first.gain.se) == (0.5, 0.5, 0.0, 0.0)
    # fold 2 with the choice made on fold 1 (A: 1.0 there), which does worse on fold 2
    assert (second.fold, second.chosen, second.train_value) == (2, "A", 1.0)
    assert second.chosen_value.value == 0.0 and second.baseline.value == 0.5
    assert second.gain.value == -0.5
    assert second.gain.se == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert second.gain.n == 2


def test_ties_keep_the_baseline_listed_first() -> None:
    fold_of = [1, 2]
    (first, second) = cross_validate({"none": [0.5, 0.5], "A": [0.5, 0.5]}, fold_of)
    assert first.chosen == second.chosen == "none"


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="baseline"):
        cross_validate({"A": [1.0]}, [1])
    with pytest.raises(ValueError, match="A: 1 scores for 2 questions"):
        cross_validate({"none": [1.0, 0.0], "A": [1.0]}, [1, 2])


def test_mean_se_and_config_helpers() -> None:
    e = mean_se([1.0, 0.0, 1.0, 0.0])
    assert (e.value, e.n) == (0.5, 4) and e.se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert list(load_configs('{"DoLa": {"decoding": {"method": "dola"}}, "none": {"x": 1}}')) == ["none", "DoLa"]


def test_per_fold_sample_keeps_file_order_and_both_folds() -> None:
    from eval.truthfulqa_cv import per_fold_sample

    assert per_fold_sample(817, None) == list(range(817))
    picked = per_fold_sample(817, 150, seed=3)
    assert picked == sorted(picked) and len(set(picked)) == 300
    fold_of = folds(817)
    assert [fold_of[i] for i in picked].count(1) == 150
    assert picked == per_fold_sample(817, 150, seed=3)


def test_by_fold_configs_are_checked_and_send_each_fold_its_own_fields(tmp_path: Path) -> None:
    import asyncio

    from eval.client import Scored
    from eval.data import MCItem
    from eval.score_cache import ScoreCache
    from eval.truthfulqa_cv import fold_fields, scored_by_fold

    ok = load_configs('{"ITI": {"by_fold": {"1": {"s": 2}, "2": {"s": 1}}}}')
    assert fold_fields(ok["ITI"], 1) == {"s": 2} and fold_fields(ok["ITI"], 2) == {"s": 1}
    assert fold_fields({"s": 3}, 2) == {"s": 3}
    for bad in ('{"x": {"by_fold": {"1": {}}}}', '{"x": {"by_fold": {"1": {}, "2": {}}, "steering": []}}',
                '{"x": {"by_fold": {"1": {}, "2": 3}}}'):
        with pytest.raises(SystemExit, match="'x': by_fold"):
            load_configs(bad)

    class FakeApi:
        """Option 'good' scores the fold's field ``s``; 'bad' scores 0 (so MC1 = [s > 0])."""

        def __init__(self) -> None:
            self.calls: list[tuple[int, dict[str, int]]] = []

        async def score(self, ctx: list[str], cont: list[str], extra: dict[str, int], desc: str = "") -> list[Scored]:
            self.calls.append((len(ctx), extra))
            return [Scored([float(extra["s"]) if c == "good" else 0.0]) for c in cont]

    item = MCItem("q", {"good": 1, "bad": 0}, {"good": 1, "bad": 0}, None, (), ())
    api = FakeApi()
    cache = ScoreCache(tmp_path, "m", "chat")
    fold_of = [2, 1, 2]
    by_fold = {"by_fold": {"1": {"s": -1}, "2": {"s": 1}}}
    got = asyncio.run(scored_by_fold(api, [item] * 3, ["c"] * 3, "chat",  # type: ignore[arg-type]
                                     by_fold, "ITI", fold_of, [500, 7, 600], cache))
    assert got["MC1"] == [1.0, 0.0, 1.0]  # each question in its own place, scored with its fold's fields
    assert api.calls == [(2, {"s": -1}), (4, {"s": 1})]  # fold 1's one question, then fold 2's two (2 options each)

    # a larger sample computes only its new questions; another configuration sending fold 2 the
    # same fields reuses fold 2's scores; chunks are scored (and written) one at a time
    api.calls.clear()
    got = asyncio.run(scored_by_fold(api, [item] * 4, ["c"] * 4, "chat",  # type: ignore[arg-type]
                                     {"by_fold": {"1": {"s": 3}, "2": {"s": 1}}}, "K", [1, 2, 2, 2],
                                     [8, 500, 600, 700], cache, chunk=1))
    assert got["MC1"] == [1.0, 1.0, 1.0, 1.0]
    assert api.calls == [(2, {"s": 3}), (2, {"s": 1})]  # question 8 under s=3, then only question 700
    assert sorted(cache.get({"s": 1})) == [500, 600, 700] and sorted(cache.get({"s": -1})) == [7]


def test_neutral_perplexity_per_fold_and_the_budget_limits_each_folds_choice() -> None:
    import asyncio

    from eval.client import Scored
    from eval.truthfulqa_cv import markdown, neutral_perplexity, within_budget

    class FakeApi:
        def __init__(self) -> None:
            self.calls = 0

        async def score(self, ctx: list[str], cont: list[str], extra: dict[str, float], desc: str = "") -> list[Scored]:
            self.calls += 1
            return [Scored([-extra.get("nll", 1.0)] * 2) for _ in cont]

    configs = {"none": {}, "ITI": {"by_fold": {"1": {"nll": 9.0}, "2": {"nll": math.log(2.2 * math.e)}}}}
    api = FakeApi()
    ppl = asyncio.run(neutral_perplexity(api, configs, ["a", "b"]))  # type: ignore[arg-type]
    assert ppl["none"] == {1: pytest.approx(math.e), 2: pytest.approx(math.e)} and api.calls == 3  # none: one pass
    assert ppl["ITI"] == {1: pytest.approx(math.exp(9.0)), 2: pytest.approx(2.2 * math.e)}
    assert within_budget(ppl, None) is None
    assert within_budget(ppl, 0.1) == {1: {"none"}, 2: {"none"}}
    assert within_budget(ppl, 1.5) == {1: {"none"}, 2: {"none", "ITI"}}
    scores = {"none": [0.0, 0.0, 0.0, 0.0], "ITI": [1.0, 1.0, 1.0, 1.0]}
    fold_of = [1, 1, 2, 2]
    free = cross_validate(scores, fold_of)
    assert [r.chosen for r in free] == ["ITI", "ITI"]
    limited = cross_validate(scores, fold_of, eligible=within_budget(ppl, 1.5))
    assert [r.chosen for r in limited] == ["none", "ITI"]  # fold 1's ITI fields are over budget
    assert limited[0].gain.value == 0.0 and limited[1].gain.value == 1.0
    mc = {n: {"MC1": v, "MC2": v} for n, v in scores.items()}
    table = markdown("t", list(configs), mc, fold_of, {"MC1": limited}, ppl)
    assert "| none | 0.000 ± 0.000 | 0.000 ± 0.000 | 0.000 ± 0.000 | 0.000 ± 0.000 | 2.72 (+0.0%) | 2.72 (+0.0%) |" in table
    assert "| ITI |" in table and "| 8103.08 (+297995.8%) | 5.98 (+120.0%) |" in table
    assert asyncio.run(neutral_perplexity(FakeApi(), configs, [])) == {}  # type: ignore[arg-type]
