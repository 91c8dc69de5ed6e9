"""eval.switch: the switch-rate summary and the candidate interventions, on fixed toy inputs."""

from __future__ import annotations

import math

import pytest

from eval.switch import candidates, markdown, summarise


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
