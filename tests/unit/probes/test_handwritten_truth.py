"""Checks of the hand-written truth-domain statements in ``data/truth_domains/handwritten``.

Each file is one domain; these tests pin the format (columns, 0/1 fields, truth types), the
balance the files promise (half true per domain, a quarter to nearly half negated, negated rows of
both labels), the group convention (every group holds a true and a false member, so a group split
never separates a statement from its counterpart), the negation marking (a negated row says
"not", "n't", "never", "no", ... and an affirmative one does not) and the counts stated in
PROVENANCE.md.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[3] / "data" / "truth_domains" / "handwritten"
COLUMNS = ["text", "label", "group", "domain", "truth_type", "negated"]
DOMAINS = {
    "definitions": "definitional",
    "science": "empirical",
    "history_geography": "empirical",
    "fiction": "fictional",
    "ethics": "ethical",
    "everyday": "empirical",
    "logic_words": "logical",
}
NEGATION = re.compile(
    r"\b(?:not|never|no|none|nobody|nothing|neither|nor|cannot)\b|n't", re.IGNORECASE
)


def read(domain: str) -> list[dict[str, str]]:
    with (HERE / f"{domain}.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_the_folder_holds_exactly_the_domains() -> None:
    assert sorted(p.stem for p in HERE.glob("*.csv")) == sorted(DOMAINS)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_rows_are_well_formed(domain: str) -> None:
    rows = read(domain)
    assert 230 <= len(rows) <= 300
    for r in rows:
        assert r["label"] in ("0", "1") and r["negated"] in ("0", "1"), r
        assert r["domain"] == domain and r["truth_type"] == DOMAINS[domain], r
        assert re.fullmatch(rf"{domain}:\d{{3}}", r["group"]), r
        text = r["text"]
        assert text == text.strip() and text[0].isupper() and text.endswith("."), r
        assert not re.search(r"[.!?]\s", text), f"more than one sentence: {text!r}"


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_labels_and_negations_are_balanced(domain: str) -> None:
    rows = read(domain)
    true = sum(r["label"] == "1" for r in rows)
    assert 0.45 <= true / len(rows) <= 0.55
    negated = [r for r in rows if r["negated"] == "1"]
    assert 0.25 <= len(negated) / len(rows) <= 0.45
    neg_true = sum(r["label"] == "1" for r in negated)
    assert 0.4 <= neg_true / len(negated) <= 0.6


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_every_group_has_a_true_and_a_false_member(domain: str) -> None:
    labels: dict[str, set[str]] = defaultdict(set)
    for r in read(domain):
        labels[r["group"]].add(r["label"])
    assert all(v == {"0", "1"} for v in labels.values()), [
        g for g, v in labels.items() if v != {"0", "1"}
    ]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_negated_rows_and_only_they_say_a_negation_word(domain: str) -> None:
    for r in read(domain):
        has = NEGATION.search(r["text"]) is not None
        assert has == (r["negated"] == "1"), r


def test_the_negation_pattern() -> None:
    assert NEGATION.search("Fish cannot breathe on dry land.")
    assert NEGATION.search("It isn't so.")
    assert NEGATION.search("Nobody is taller than Ben.")
    assert not NEGATION.search("Norway is north of Notre-Dame and the Nobel knot.")


def test_no_text_occurs_twice_across_files() -> None:
    seen: dict[str, str] = {}
    for domain in DOMAINS:
        for r in read(domain):
            key = " ".join(r["text"].lower().split())
            assert key not in seen, f"{r['text']!r} in {domain} and {seen[key]}"
            seen[key] = domain


def test_provenance_counts_match_the_files() -> None:
    text = (HERE / "PROVENANCE.md").read_text(encoding="utf-8")
    total = 0
    for domain in DOMAINS:
        rows = read(domain)
        m = re.search(
            rf"^\|\s*`?{domain}`?\s*\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|",
            text,
            re.MULTILINE,
        )
        assert m is not None, f"no row for {domain} in PROVENANCE.md"
        stated = (m.group(1), *(int(m.group(i)) for i in range(2, 6)))
        actual = (
            DOMAINS[domain],
            len(rows),
            len({r["group"] for r in rows}),
            sum(r["label"] == "1" for r in rows),
            sum(r["negated"] == "1" for r in rows),
        )
        assert stated == actual, domain
        total += len(rows)
    m = re.search(r"^\|\s*\*\*total\*\*\s*\|[^|]*\|\s*\*?\*?(\d+)", text, re.MULTILINE)
    assert m is not None and int(m.group(1)) == total
