"""The generated truth domains: reproducible, balanced, and every label re-derived here from the
statement's own text by a computation independent of probes.truthgen (numbers parsed back,
syllogisms checked against every set model, conditionals by truth table, cities against the table)."""

from __future__ import annotations

import calendar
import csv
import itertools
import re
import shutil
import string
from collections.abc import Callable
from pathlib import Path

import pytest

from probes import datasets as ds
from probes import sources, truthdata, truthgen

DATA = ds.REPO_ROOT / "data"
GENERATED = DATA / "truth_domains" / "generated"
DOMAINS = ("arithmetic", "comparison", "divisibility", "syllogism", "conditional", "geography_relations")

# -- independent readers ------------------------------------------------------------------------

_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_DECADES = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_WORDS = {w: i for i, w in enumerate(_UNITS)} | {w: 10 * i for i, w in enumerate(_DECADES, 2)}


def number(s: str) -> int:
    s = s.strip().lower()
    if s.isdigit():
        return int(s)
    total = 0
    for part in s.replace(" and ", " ").replace("-", " ").split():
        total = total * 100 if part == "hundred" else total + _WORDS[part]
    return total


def _arithmetic(text: str) -> tuple[str, int, int, bool, int]:
    """(operation, left, right, negated, claimed result) read back from the text."""
    m = re.fullmatch(r"(?:The (sum|difference|product) (?:of|between) (.+) and (.+) is( not)? (.+)"
                     r"|(.+) (plus|minus|times) (.+?) (equals|does not equal) (.+))\.", text, re.I)
    assert m, text
    if m[1]:
        op, a, b, neg, c = m[1].lower(), m[2], m[3], bool(m[4]), m[5]
    else:
        op, a, b, neg, c = m[7], m[6], m[8], m[9] == "does not equal", m[10]
    op = {"sum": "plus", "difference": "minus", "product": "times"}.get(op, op)
    return op, number(a), number(b), neg, number(c)


def arithmetic_truth(text: str) -> bool:
    op, x, y, neg, c = _arithmetic(text)
    assert op != "minus" or x > y
    return ({"plus": x + y, "minus": x - y, "times": x * y}[op] == c) != neg


_MONTHS = list(calendar.month_name)[1:]
_DAYS = list(calendar.day_name)  # Monday first


def comparison_truth(text: str) -> bool:
    if m := re.fullmatch(r"(\d+) is( not)? (larger|greater|smaller|less) than (\d+)\.", text):
        x, y = int(m[1]), int(m[4])
        return ((x > y) if m[3] in ("larger", "greater") else (x < y)) != bool(m[2])
    if m := re.fullmatch(r"(\w+) (comes|does not come) right (before|after) (\w+) in the week\.", text):
        i, j = _DAYS.index(m[1]), _DAYS.index(m[4])
        holds = (j - i) % 7 == 1 if m[3] == "before" else (i - j) % 7 == 1
        return holds != (m[2] == "does not come")
    m = re.fullmatch(r"(?:The letter )?(\w+) (comes|does not come) (before|after) (?:the letter )?(\w+) in the "
                     r"(calendar year|alphabet)\.", text)
    assert m, text
    order = _MONTHS if m[5] == "calendar year" else list(string.ascii_uppercase)
    i, j = order.index(m[1]), order.index(m[4])
    return ((i < j) if m[3] == "before" else (i > j)) != (m[2] == "does not come")


def divisibility_truth(text: str) -> bool:
    m = re.fullmatch(r"(\d+) is( not)? (?:divisible by (\d+)|an? (even|odd|prime|composite) number)\.", text)
    assert m, text
    n = int(m[1])
    prime = n > 1 and not any(n % k == 0 for k in range(2, n))
    kind = m[4]
    holds = {"even": n % 2 == 0, "odd": n % 2 == 1, "prime": prime, "composite": n > 1 and not prime,
             None: m[3] is not None and n % int(m[3]) == 0}[kind]
    return holds != bool(m[2])


def _categorical(s: str) -> tuple[str, str, str]:
    m = re.fullmatch(r"(all|no|some) (.+?) are (not )?(.+)", s)
    assert m, s
    return (m[1] + (" not" if m[3] else ""), m[2], m[4])


def _holds(prop: tuple[str, str, str], regions: frozenset[tuple[bool, ...]], terms: list[str]) -> bool:
    q, x, y = prop
    ix, iy = terms.index(x), terms.index(y)
    xs = [r for r in regions if r[ix]]
    return {"all": all(r[iy] for r in xs), "no": not any(r[iy] for r in xs),
            "some": any(r[iy] for r in xs), "some not": any(not r[iy] for r in xs)}[q]


def syllogism_truth(text: str) -> bool:
    """Valid iff the conclusion holds in every model where the premises do; a model is the set of
    non-empty regions of the three terms' Venn diagram (2^8 models)."""
    m = re.fullmatch(r"Given that (.+), it (follows|does not follow) that (.+)\.", text)
    assert m, text
    premises = [_categorical(p) for p in m[1].split(" and ")]
    conclusion = _categorical(m[3])
    terms = sorted({t for p in [*premises, conclusion] for t in p[1:]})
    cells = list(itertools.product([False, True], repeat=len(terms)))
    valid = all(_holds(conclusion, frozenset(model), terms)
                for k in range(len(cells) + 1) for model in itertools.combinations(cells, k)
                if all(_holds(p, frozenset(model), terms) for p in premises))
    return valid == (m[2] == "follows")


_CLAUSE = {c: (i, pol) for i, pair in enumerate(truthdata.CLAUSES) for c, pol in zip(pair, (True, False), strict=True)}


def conditional_truth(text: str) -> bool:
    m = re.fullmatch(r"Given that if (.+) then (.+), and that (.+), it (follows|does not follow) that (.+)\.", text)
    assert m, text
    (p, pp), (q, qp), (x, xp), (y, yp) = (_CLAUSE[m[i]] for i in (1, 2, 3, 5))
    assert pp and qp  # the rule's clauses are affirmative
    atoms = sorted({p, q, x, y})
    valid = True
    for values in itertools.product([False, True], repeat=len(atoms)):
        v = dict(zip(atoms, values, strict=True))
        if ((not v[p]) or v[q]) and v[x] == xp and v[y] != yp:
            valid = False
    return valid == (m[4] == "follows")


def _cities() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with (DATA / "trilemma_of_truth" / "city_locations.csv").open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["object_1"], set()).add(r["correct_object_2"])
    return out


def geography_truth(text: str, cities: dict[str, set[str]]) -> bool:
    m = re.fullmatch(r"(.+?)(?: and | is( not)? in the same country as )(.+?)(?: are( not)? in the same country"
                     r"| are( not)? both in (.+))?\.", text)
    assert m, text
    a, b = m[1], m[3]
    (ca,), (cb,) = cities[a], cities[b]  # one row-country per city, else the statement is not derivable
    assert "," not in ca + cb
    neg = bool(m[2] or m[4] or m[5])
    holds = ca == cb and (m[6] is None or m[6] in (ca, ca.removeprefix("the ")))
    return holds != neg


def checkers() -> dict[str, Callable[[str], bool]]:
    cities = _cities()
    return {"arithmetic": arithmetic_truth, "comparison": comparison_truth, "divisibility": divisibility_truth,
            "syllogism": syllogism_truth, "conditional": conditional_truth,
            "geography_relations": lambda t: geography_truth(t, cities)}


# -- tests ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated() -> dict[str, ds.Dataset]:
    doms = sources.truth_domains()
    return {d: doms[d] for d in DOMAINS}


def test_same_seed_same_bytes_and_the_committed_files_are_a_regeneration() -> None:
    once, twice = truthgen.generate(0), truthgen.generate(0)
    assert sorted(once) == sorted(DOMAINS) and once == twice
    for d in DOMAINS:
        assert (GENERATED / f"{d}.csv").read_bytes() == truthdata.render(once[d]).encode()
    other = truthgen.generate(1)
    assert all(other[d] != once[d] for d in DOMAINS)


def test_the_command_writes_the_same_files_and_check_detects_drift(tmp_path: Path) -> None:
    (tmp_path / "trilemma_of_truth").mkdir()
    shutil.copy(DATA / "trilemma_of_truth" / "city_locations.csv", tmp_path / "trilemma_of_truth")
    assert truthgen.main(["--root", str(tmp_path), "--check"]) == 1  # nothing written yet
    assert truthgen.main(["--root", str(tmp_path)]) == 0
    out = tmp_path / "truth_domains" / "generated"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {f"{d}.csv": (GENERATED / f"{d}.csv").read_bytes()
                                                              for d in DOMAINS}
    assert truthgen.main(["--root", str(tmp_path), "--check"]) == 0
    (out / "comparison.csv").write_text((out / "comparison.csv").read_text().replace(",1,", ",0,", 1))
    assert truthgen.main(["--root", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_label_matches_an_independent_computation(generated: dict[str, ds.Dataset], domain: str) -> None:
    check = checkers()[domain]
    wrong = [(e.text, e.label) for e in generated[domain].examples if check(e.text) != bool(e.label)]
    assert wrong == []


@pytest.mark.parametrize("domain", DOMAINS)
def test_balanced_labels_a_third_negated_and_negations_balanced(generated: dict[str, ds.Dataset], domain: str) -> None:
    data = generated[domain]
    ex = data.examples
    neg = [e for e in ex if e.negated]
    assert 300 <= len(ex) <= 400 and sum(e.label for e in ex) * 2 == len(ex)
    assert len(neg) * 3 == len(ex) and sum(e.label for e in neg) * 2 == len(neg)
    assert len({e.text for e in ex}) == len(ex)
    assert data.truth_type == ("empirical" if domain == "geography_relations" else "logical")
    assert data.path == f"data/truth_domains/generated/{domain}.csv"


_DENEGATE = ((" does not equal ", " equals "), (" does not come ", " comes "), (" does not follow ", " follows "),
             (" are not in the same ", " are in the same "), (" is not in the same ", " is in the same "),
             (" are not both ", " are both "), (" is not ", " is "))


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_negation_flips_the_label_of_its_affirmative_in_the_same_group(
        generated: dict[str, ds.Dataset], domain: str) -> None:
    ex = generated[domain].examples
    by_text = {e.text: e for e in ex}
    for e in (e for e in ex if e.negated):
        plain = e.text
        for neg, pos in _DENEGATE:
            if neg in plain:
                plain = plain.replace(neg, pos, 1)
                break
        aff = by_text[plain]
        assert not aff.negated and aff.group == e.group and aff.label == 1 - e.label


@pytest.mark.parametrize("domain", DOMAINS)
def test_no_fact_crosses_a_group_split(generated: dict[str, ds.Dataset], domain: str) -> None:
    """A fact's statements share a group, the group split keeps them together, and two groups never
    hold the same fact in other words (same operands, same cities, same terms or clauses)."""
    ex = generated[domain].examples
    groups: dict[str, list[ds.Example]] = {}
    for e in ex:
        groups.setdefault(e.group, []).append(e)
    assert all(len(g) == 3 and {e.label for e in g} == {0, 1} for g in groups.values())

    for seed in range(3):
        train, test = ds.group_split(ex, 0.3, seed)
        assert train and test and {e.group for e in train}.isdisjoint({e.group for e in test})
    owner: dict[object, str] = {}
    for e in ex:
        for atom in fact_atoms(domain, e.text):
            assert owner.setdefault(atom, e.group) == e.group, (atom, e.group, owner[atom])


def fact_atoms(domain: str, text: str) -> set[object]:
    """What a statement is about, read from its text: two groups must never share one of these
    (the same operands, the same pair of items, number, terms, clauses or city)."""
    if domain == "arithmetic":
        op, x, y, _, _ = _arithmetic(text)
        return {(op, x, y) if op == "minus" else (op, min(x, y), max(x, y))}
    if domain == "comparison":
        items = re.findall(r"\b(\d+|[A-Z][a-z]+day|[A-Z](?= |\b)|" + "|".join(_MONTHS) + r")\b", text)
        assert len(items) == 2, text
        return {frozenset(items)}
    if domain == "divisibility":
        return {int(text.split()[0])}
    if domain == "syllogism":
        m = re.fullmatch(r"Given that (.+), it (?:follows|does not follow) that (.+)\.", text)
        assert m
        return {frozenset(t for p in [*m[1].split(" and "), m[2]] for t in _categorical(p)[1:])}
    if domain == "conditional":
        m = re.fullmatch(r"Given that if (.+) then (.+), and that .+", text)
        assert m
        return {frozenset((m[1], m[2]))}
    m = re.fullmatch(r"(.+?)(?: and | is(?: not)? in the same country as )(.+?)(?: are(?: not)? in the same country"
                     r"| are(?: not)? both in .+)?\.", text)
    assert m
    return {m[1], m[2]}
