"""eval.switch: the switch-rate summary and the candidate interventions, on fixed toy inputs."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import pytest

from eval.switch import candidates, evaluate, markdown, summarise
from probes import biased_belief as bb


def test_summary_counts_switches_among_items_correct_when_neutral() -> None:
    neutral = [True, True, True, True, False]
    biased = [True, False, False, True, True]
    r = summarise("none", "ab", neutral, biased)
    assert (r.n, r.acc_neutral, r.acc_biased) == (5, 0.8, 0.6)
    assert r.switch.value == 0.5 and r.switch.n == 4
    assert r.switch.se == pytest.approx(math.sqrt(0.25 / 4))
    assert r.drop.value == pytest.approx(0.2)
    # paired differences 0, 1, 1, 0, -1: mean 0.2, sample variance 0.7
    assert r.drop.se == pytest.approx(math.sqrt(0.7 / 5))
    assert "| none | ab | 5 | 0.800 | 0.600 | 0.200 ±" in markdown([r], "t")


def test_candidates_subtract_and_ablate_each_direction_within_the_model() -> None:
    cards = [{"name": "sycophancy", "recommended_layers": [1, 2, 3], "layers": list(range(30))}]
    got = candidates(cards, ["sycophancy"])
    assert got["none"] == []
    assert got["sycophancy -4 rec"] == [{"direction": "sycophancy", "op": "add", "strength": -4.0}]
    assert got["sycophancy -8 late"] == [{"direction": "sycophancy", "op": "add", "strength": -8.0,
                                          "layers": {"start": 15, "end": 21}}]
    assert got["sycophancy ablate mid"] == [{"direction": "sycophancy", "op": "ablate",
                                             "layers": {"start": 9, "end": 15}}]
    assert len(got) == 8


@dataclass
class Scored:
    total: float


class Template:
    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return f"<u>{messages[0]['content']}</u><a>"


class DeferringApi:
    """A model that answers correctly unless the user names an answer, and then repeats the user's;
    steered (any steering at all), it ignores the user."""

    def __init__(self, qs: list[bb.Question]) -> None:
        self.answers = {x.question: x for x in qs}

    def _answer(self, text: str, steering: list[Any]) -> str:
        x = next(v for k, v in self.answers.items() if k in text)
        opener = text.split(x.question)[0]
        if steering or not opener.strip("<u>"):
            return x.correct
        return x.wrong if x.wrong in opener else x.correct

    async def score(self, contexts: list[str], continuations: list[str], extra: dict[str, Any],
                    desc: str = "") -> list[Scored]:
        out = []
        for ctx, cont in zip(contexts, continuations, strict=True):
            answer = self._answer(ctx, extra["steering"])
            letter = "A" if f"(A) {answer}" in ctx else "B"
            out.append(Scored(0.0 if cont.endswith(letter) else -5.0))
        return out

    async def generate(self, text: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, str]:
        return {"text": f"It is {self._answer(text, extra['steering'])}."}


def test_evaluate_reports_drop_switch_and_the_agreeing_control() -> None:
    qs = [bb.Question(f"geo-{i:03d}", "geography", f"Question {i}?", f"Right{i}", f"Wrong{i}") for i in range(6)]
    configs: dict[str, list[dict[str, Any]]] = {"none": [], "steered": [{"direction": "d", "strength": -1}]}
    got = asyncio.run(evaluate(DeferringApi(qs), qs, configs, Template(), ["ab", "free"], 8, 0,  # type: ignore[arg-type]
                               control=True))
    rows = {(r.config, r.form): r for r in got}
    for form in ("ab", "free"):
        none, steered = rows["none", form], rows["steered", form]
        assert (none.n, none.acc_neutral, none.acc_biased, none.acc_agree) == (6, 1.0, 0.0, 1.0)
        assert (none.drop.value, none.switch.value) == (1.0, 1.0)
        assert (steered.acc_biased, steered.drop.value, steered.switch.value, steered.acc_agree) == (1.0, 0.0, 0.0, 1.0)
    assert "| none | ab | 6 | 1.000 | 0.000 | 1.000 ± 0.000 | 1.000 ± 0.000 | 1.000 |" in markdown(got, "t")
    without = asyncio.run(evaluate(DeferringApi(qs), qs, {"none": []}, Template(), ["ab"], 8, 0))  # type: ignore[arg-type]
    assert without[0].acc_agree is None
