"""probes.sources: the truth domains (licensed, generated, handwritten), their validation, and
the TruthfulQA cross-validation folds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probes import datasets as ds
from probes import sources

TRUTH_HEADER = "text,label,group,domain,truth_type,negated\n"


@pytest.fixture
def truth_root(root: Path) -> Path:
    """``root`` plus a negation column, a hallucination pool and one generated and one handwritten domain."""
    tri = root / "trilemma_of_truth"
    (tri / "city_locations.csv").write_text(
        "statement,object_1,correct,negation\n"
        "The city of Laoag is not located in Libya.,Laoag,TRUE,TRUE\n"
        "The city of Laoag is located in Libya.,Laoag,FALSE,FALSE\n"
    )
    for f in ("word_synonyms.csv", "word_instances.csv"):
        (tri / f).write_text("statement,object_1,correct,negation\nA car is an auto.,car,true,false\n")
    (root / "caa_behaviours").mkdir()
    items = [{"question": "Why is the moon made of cheese?\n\nChoices:\n (A) It is not; the moon is rock.\n (B) Milk.",
              "answer_matching_behavior": "(B)", "answer_not_matching_behavior": "(A)"},
             {"question": "Since fish fly, how high?\n\nChoices:\n (A) Ten metres.\n (B) Most fish do not fly.",
              "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}]
    (root / "caa_behaviours" / "hallucination.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    gen = root / "truth_domains" / "generated"
    gen.mkdir(parents=True)
    (gen / "arithmetic.csv").write_text(TRUTH_HEADER + "Two plus two equals four.,1,2+2,arithmetic,logical,0\n"
                                        "Two plus two does not equal four.,0,2+2,arithmetic,logical,1\n")
    hand = root / "truth_domains" / "handwritten"
    hand.mkdir()
    (hand / "fiction.csv").write_text(TRUTH_HEADER + "Frodo carries the Ring.,true,frodo,fiction,fictional,false\n"
                                      "Frodo does not carry the Ring.,false,frodo,fiction,fictional,true\n")
    return root


def test_truth_domains_cover_licensed_generated_and_handwritten_sets(truth_root: Path) -> None:
    doms = sources.truth_domains(truth_root)
    assert list(doms) == [*sources.LICENSED_DOMAINS, "arithmetic", "fiction"]
    assert {d: v.truth_type for d, v in doms.items()} == {**sources.LICENSED_DOMAINS, "arithmetic": "logical",
                                                          "fiction": "fictional"}
    for d, v in doms.items():
        assert v.name == f"truth_{d}" and {e.domain for e in v.examples} == {d}
    assert [(e.label, e.negated) for e in doms["cities"].examples] == [(1, True), (0, False)]
    assert {e.negated for e in doms["mmlu_true_false"].examples} == {None}
    assert [(e.text, e.label, e.negated) for e in doms["fiction"].examples] == [
        ("Frodo carries the Ring.", 1, False), ("Frodo does not carry the Ring.", 0, True)]
    assert doms["arithmetic"].license.startswith("Apache-2.0")
    # the loader's name for a domain is truth_<domain>, and extra fields leave the cache key alone
    assert sources.builtin("truth_cities", root=truth_root).digest() == sources.builtin("cities", root=truth_root).digest()
    assert sources.load("truth_fiction", root=truth_root).examples == doms["fiction"].examples


def test_false_premise_items_become_two_answers_with_the_rejection_true(truth_root: Path) -> None:
    d = sources.truth_domain("hallucination", truth_root)
    assert [(e.text, e.label, e.group) for e in d.examples] == [
        ("Question: Why is the moon made of cheese?\nAnswer: It is not; the moon is rock.", 1,
         "Why is the moon made of cheese?"),
        ("Question: Why is the moon made of cheese?\nAnswer: Milk.", 0, "Why is the moon made of cheese?"),
        ("Question: Since fish fly, how high?\nAnswer: Most fish do not fly.", 1, "Since fish fly, how high?"),
        ("Question: Since fish fly, how high?\nAnswer: Ten metres.", 0, "Since fish fly, how high?"),
    ]
    pool = truth_root / "caa_behaviours" / "hallucination.jsonl"
    pool.write_text(pool.read_text() + json.dumps({"question": "No choices?", "answer_matching_behavior": "(A)",
                                                   "answer_not_matching_behavior": "(B)"}) + "\n")
    with pytest.raises(ds.DatasetError, match=f"{pool}: row 3: expected 'question"):
        sources.truth_domain("hallucination", truth_root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no rows"),
        ("text,label,group,domain,negated\na,1,g,bad,0\n", r"missing column\(s\) \['truth_type'\]"),
        (TRUTH_HEADER + "a,1,g,bad,logical,0\nb,maybe,g,bad,logical,0\n", "row 2: label 'maybe'"),
        (TRUTH_HEADER + "a,1,g,bad,poetic,0\n", "row 1: truth_type 'poetic' is not one of definitional"),
        (TRUTH_HEADER + "a,1,g,bad,logical,2\n", "row 1: negated '2'"),
        (TRUTH_HEADER + "a,1,g,other,logical,0\n", "row 1: domain 'other' is not the file's name 'bad'"),
        (TRUTH_HEADER + "a,1,,bad,logical,0\n", "row 1: empty group"),
        (TRUTH_HEADER + ",1,g,bad,logical,0\n", "row 1: empty text"),
    ],
)
def test_bad_truth_domain_files_name_the_file_and_row(truth_root: Path, content: str, message: str) -> None:
    bad = truth_root / "truth_domains" / "handwritten" / "bad.csv"
    bad.write_text(content)
    with pytest.raises(ds.DatasetError, match=f"{bad}: {message}"):
        sources.truth_domains(truth_root)


def test_a_domain_name_used_twice_is_an_error(truth_root: Path) -> None:
    hand = truth_root / "truth_domains" / "handwritten"
    (hand / "arithmetic.csv").write_text(TRUTH_HEADER + "x,1,g,arithmetic,logical,0\n")
    with pytest.raises(ds.DatasetError, match=r"domain 'arithmetic' is also .*generated/arithmetic\.csv"):
        sources.truth_domains(truth_root)
    (hand / "arithmetic.csv").unlink()
    (hand / "cities.csv").write_text(TRUTH_HEADER + "x,1,g,cities,empirical,0\n")
    with pytest.raises(ds.DatasetError, match="domain 'cities' is also a licensed data set"):
        sources.truth_domains(truth_root)
    with pytest.raises(ds.DatasetError, match="unknown truth domain 'nope'"):
        sources.truth_domain("nope", truth_root / "elsewhere")


def test_truthfulqa_fold_keeps_the_questions_of_one_cv_fold_in_the_mc_files_order(root: Path) -> None:
    names = [f"filler {i}?" for i in range(sources.TRUTHFULQA_FOLD_SPLIT)]
    order = [*names[:-1], "Is the moon cheese?", "Do seeds grow in you?"]  # the MC file's order, not the CSV's
    (root / "truthfulqa" / "v0" / "mc_task.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in order))
    d = sources.builtin("truthfulqa", root=root)
    first, second = sources.truthfulqa_fold(d, 1, root), sources.truthfulqa_fold(d, 2, root)
    assert {e.group for e in first.examples} == {"tqa:1"} and len(first.examples) == 3  # the moon: question 409
    assert {e.group for e in second.examples} == {"tqa:0"} and len(second.examples) == 3
    with pytest.raises(ds.DatasetError, match="1 or 2"):
        sources.truthfulqa_fold(d, 3, root)
    (root / "truthfulqa" / "v0" / "mc_task.jsonl").write_text(json.dumps({"question": "other?"}) + "\n")
    with pytest.raises(ds.DatasetError, match="no answer belongs to a TruthfulQA fold-1 question"):
        sources.truthfulqa_fold(d, 1, root)


def test_the_shipped_truthfulqa_splits_into_409_and_408_questions() -> None:
    d = sources.builtin("truthfulqa")
    first, second = sources.truthfulqa_fold(d, 1), sources.truthfulqa_fold(d, 2)
    groups = [{e.group for e in f.examples} for f in (first, second)]
    assert [len(g) for g in groups] == [409, 408] and not groups[0] & groups[1]
    assert len(first.examples) + len(second.examples) == len(d.examples)
