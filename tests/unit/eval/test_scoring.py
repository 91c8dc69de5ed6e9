import math

import pytest

from eval.scoring import (
    CoveragePoint,
    area_under_coverage,
    auroc,
    coverage_curve,
    mc1,
    mc2,
    pair_probability,
    perplexity,
)


def test_mc1_picks_highest_option() -> None:
    assert mc1([-1.0, -2.0, -3.0], [1, 0, 0]) == 1.0
    assert mc1([-2.0, -1.0, -3.0], [1, 0, 0]) == 0.0


def test_mc1_tie_with_a_false_option_is_wrong() -> None:
    assert mc1([-1.0, -1.0], [1, 0]) == 0.0
    assert mc1([-1.0, -1.0, -5.0], [1, 1, 0]) == 1.0


def test_mc2_is_normalised_true_mass() -> None:
    lps = [math.log(0.2), math.log(0.1), math.log(0.3), math.log(0.4)]
    assert mc2(lps, [1, 1, 0, 0]) == pytest.approx(0.3)
    # stable for very negative totals (long answers)
    assert mc2([-1000.0, -1000.0 - math.log(3)], [1, 0]) == pytest.approx(0.75)


def test_mc_rejects_bad_labels() -> None:
    with pytest.raises(ValueError):
        mc2([-1.0], [0])
    with pytest.raises(ValueError):
        mc1([-1.0, -2.0], [1])


def test_pair_probability() -> None:
    assert pair_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert pair_probability(-500.0, -500.0) == 0.5


def test_perplexity_over_all_tokens() -> None:
    # mean NLL = (1 + 2 + 3) / 3 = 2 -> e^2, whatever the document boundaries
    assert perplexity([[-1.0], [-2.0, -3.0]]) == pytest.approx(math.exp(2.0))
    assert perplexity([[-9999.0, -1.0]]) == math.inf  # DoLa's implausible tokens, as the server writes -inf
    with pytest.raises(ValueError):
        perplexity([[]])


def test_auroc_exact() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([1, 0], [0.9, 0.1]) == 1.0
    with pytest.raises(ValueError):
        auroc([1, 1], [0.2, 0.3])


def test_coverage_curve() -> None:
    pts = coverage_curve([0.9, 0.8, 0.8, 0.1], [True, False, True, False])
    assert pts == [
        CoveragePoint(math.inf, 0.0, None),
        CoveragePoint(0.9, 0.25, 1.0),
        CoveragePoint(0.8, 0.75, 2 / 3),
        CoveragePoint(0.1, 1.0, 0.5),
    ]
    # trapezoids: (0.5 * (1 + 2/3) / 2 + 0.25 * (2/3 + 1/2) / 2) / 0.75
    expected = (0.5 * (1 + 2 / 3) / 2 + 0.25 * (2 / 3 + 0.5) / 2) / 0.75
    assert area_under_coverage(pts) == pytest.approx(expected)
    assert area_under_coverage(coverage_curve([0.5], [True])) == 1.0


def test_rouge1_and_truthful() -> None:
    from eval.scoring import rouge1, rouge_truthful

    # overlap {the, cat} = 2; p = 2/3, r = 2/4 -> F1 = 4/7
    assert rouge1("The cat sat", "the cat is here") == pytest.approx(4 / 7)
    assert rouge1("dog", "cat") == 0.0
    assert rouge_truthful("Nothing happens", ["Nothing happens to you"], ["You die"]) is True
    assert rouge_truthful("You die", ["Nothing happens to you"], ["You die"]) is False
