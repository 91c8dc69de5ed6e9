"""Truth-domain statements whose truth is computed, not looked up: ``python -m probes.truthgen``.

Writes ``data/truth_domains/generated/<domain>.csv`` in the format of :mod:`probes.truthdata`.
Every domain is built from *facts*: one fact gives a true statement, a false counterpart (a
plausible near miss: an answer off by a little, swapped operands, an invalid argument form with
the same terms, a city from another country) and the negations of both, all in one group, so a
group split never separates near-duplicates. Each fact contributes three rows: both affirmative
statements and, alternately, the negation of the true one (label 0) or of the false one (label 1),
so every file is balanced (half true), a third negated, and its negations are half true.

Invariants: the output depends only on the seed (``random.Random`` seeded with a string, no
hash randomisation or clock) and, for ``geography_relations``, on the licensed city table; the
same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from probes.datasets import data_root
from probes.truthdata import CLAUSES, MONTHS, WEEKDAYS, domain_dir, number_words, render, write_rows

GROUPS_PER_DOMAIN = 120  # three rows each: 360 rows a domain
Row = tuple[str, int, str, str, str, int]


@dataclass(frozen=True)
class Fact:
    group: str
    true: str
    false: str
    neg_true: str  # the negation of ``true``: a false statement
    neg_false: str  # the negation of ``false``: a true statement


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _num(n: int, words: bool) -> str:
    return number_words(n) if words else str(n)


# -- arithmetic -------------------------------------------------------------------------------

_ARITH = {  # op -> (affirmative, negated) templates
    "plus": (("{a} plus {b} equals {c}.", "{a} plus {b} does not equal {c}."),
             ("The sum of {a} and {b} is {c}.", "The sum of {a} and {b} is not {c}.")),
    "minus": (("{a} minus {b} equals {c}.", "{a} minus {b} does not equal {c}."),
              ("The difference between {a} and {b} is {c}.", "The difference between {a} and {b} is not {c}.")),
    "times": (("{a} times {b} equals {c}.", "{a} times {b} does not equal {c}."),
              ("The product of {a} and {b} is {c}.", "The product of {a} and {b} is not {c}.")),
}


def arithmetic(rng: random.Random) -> Iterator[Fact]:
    while True:
        op = rng.choice(sorted(_ARITH))
        if op == "times":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            c, miss = a * b, rng.choice([-b, b, -a, a, -1, 1, -2, 2])
        else:
            a, b = rng.randint(2, 60), rng.randint(2, 40)
            if op == "minus":
                a, b = max(a, b) + 1, min(a, b)
            c = a + b if op == "plus" else a - b
            miss = rng.choice([-10, -2, -1, 1, 2, 10])
        wrong = c + miss if c + miss >= 0 else c - miss
        aff, neg = rng.choice(_ARITH[op])
        words = rng.random() < 0.5
        f = {"a": _num(a, words), "b": _num(b, words)}
        yield Fact(f"{min(a, b) if op != 'minus' else a} {op} {max(a, b) if op != 'minus' else b}", _cap(aff.format(c=_num(c, words), **f)), _cap(aff.format(c=_num(wrong, words), **f)),
                   _cap(neg.format(c=_num(c, words), **f)), _cap(neg.format(c=_num(wrong, words), **f)))


# -- comparison -------------------------------------------------------------------------------

_ORDERED = {  # sequence, affirmative template, negated template (x comes before/after y)
    "month": (MONTHS, "{x} comes {rel} {y} in the calendar year.", "{x} does not come {rel} {y} in the calendar year."),
    "letter": ([chr(c) for c in range(ord("A"), ord("Z") + 1)], "The letter {x} comes {rel} the letter {y} in the alphabet.",
               "The letter {x} does not come {rel} the letter {y} in the alphabet."),
}
_NUMERIC = (("is larger than", "is not larger than", 1), ("is greater than", "is not greater than", 1),
            ("is smaller than", "is not smaller than", -1), ("is less than", "is not less than", -1))


def _order_fact(first: str, second: str, aff: str, neg: str, rng: random.Random) -> Fact:
    """``first`` comes before ``second``: say so with "before", or the converse with "after"."""
    x, y, rel = (second, first, "after") if rng.random() < 0.5 else (first, second, "before")
    return Fact(f"{first}<{second}", aff.format(x=x, y=y, rel=rel), aff.format(x=y, y=x, rel=rel),
                neg.format(x=x, y=y, rel=rel), neg.format(x=y, y=x, rel=rel))


def comparison(rng: random.Random) -> Iterator[Fact]:
    while True:
        kind = rng.choices(["number", "month", "letter", "weekday"], weights=[6, 2, 2, 1])[0]
        if kind == "number":
            lo, hi = sorted(rng.sample(range(1, 1000), 2))
            aff, neg, sign = rng.choice(_NUMERIC)
            x, y = (hi, lo) if sign > 0 else (lo, hi)  # the true order for this relation
            yield Fact(f"{lo}<{hi}", f"{x} {aff} {y}.", f"{y} {aff} {x}.", f"{x} {neg} {y}.", f"{y} {neg} {x}.")
        elif kind == "weekday":  # days are cyclic: only "right after / right before" is well defined
            i = rng.randrange(7)
            yield _order_fact(WEEKDAYS[i], WEEKDAYS[(i + 1) % 7], "{x} comes right {rel} {y} in the week.",
                              "{x} does not come right {rel} {y} in the week.", rng)
        else:
            seq, aff, neg = _ORDERED[kind]
            i, j = sorted(rng.sample(range(len(seq)), 2))
            yield _order_fact(seq[i], seq[j], aff, neg, rng)


# -- divisibility -----------------------------------------------------------------------------

def is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def divisibility(rng: random.Random) -> Iterator[Fact]:
    while True:
        kind = rng.choice(["divisible", "parity", "prime"])
        if kind == "prime":  # half prime, half composite numbers
            want_prime = rng.random() < 0.5
            n = rng.choice([k for k in range(4, 300) if is_prime(k) == want_prime])
            t, f = ("prime", "composite") if is_prime(n) else ("composite", "prime")
            yield Fact(str(n), f"{n} is a {t} number.", f"{n} is a {f} number.",
                       f"{n} is not a {t} number.", f"{n} is not a {f} number.")
        elif kind == "parity":
            n = rng.randint(10, 999)
            t, f = ("even", "odd") if n % 2 == 0 else ("odd", "even")
            yield Fact(str(n), f"{n} is an {t} number.", f"{n} is an {f} number.",
                       f"{n} is not an {t} number.", f"{n} is not an {f} number.")
        else:
            d = rng.randint(3, 12)
            n = d * rng.randint(3, 40)
            wrong = rng.choice([k for k in range(3, 13) if n % k])
            yield Fact(str(n), f"{n} is divisible by {d}.", f"{n} is divisible by {wrong}.",
                       f"{n} is not divisible by {d}.", f"{n} is not divisible by {wrong}.")


# -- syllogism and conditional ------------------------------------------------------------------

_SYLLOGISMS = (  # (valid premises, conclusion), (invalid premises, conclusion) over the same terms
    ((("all {a} are {b}", "all {c} are {a}"), "all {c} are {b}"), (("all {a} are {b}", "all {c} are {b}"), "all {c} are {a}")),
    ((("no {a} are {b}", "all {c} are {a}"), "no {c} are {b}"), (("all {a} are {b}", "no {c} are {a}"), "no {c} are {b}")),
    ((("all {a} are {b}", "some {c} are {a}"), "some {c} are {b}"),
     (("some {a} are {b}", "some {c} are {a}"), "some {c} are {b}")),
    ((("no {a} are {b}", "some {c} are {a}"), "some {c} are not {b}"),
     (("no {a} are {b}", "some {c} are not {a}"), "some {c} are {b}")),
    ((("no {a} are {b}",), "no {b} are {a}"), (("all {a} are {b}",), "all {b} are {a}")),
    ((("some {a} are {b}",), "some {b} are {a}"), (("some {a} are not {b}",), "some {b} are not {a}")),
)
_NONSENSE = ("bloops", "razzies", "lazzies", "wumpuses", "gorps", "tavs", "zibbers", "florbs", "quimbles",
             "drents", "snargs", "vints", "plonks", "gleebs", "murts", "yarks", "fendles", "krobs")
_NOUNS = ("teachers", "pilots", "painters", "doctors", "farmers", "singers", "sailors", "bakers", "lawyers",
          "runners", "poets", "chess players", "students", "tourists", "gardeners", "engineers")


def _argument(premises: tuple[str, ...], conclusion: str, follows: bool) -> str:
    return (f"Given that {' and '.join(premises)}, it {'follows' if follows else 'does not follow'} "
            f"that {conclusion}.")


def syllogism(rng: random.Random) -> Iterator[Fact]:
    """A valid form and an invalid one on the same three terms (nonsense words or real nouns,
    assigned at random, so the conclusion's own plausibility says nothing about validity). The
    group is the set of terms, so no two facts use the same terms."""
    while True:
        valid, invalid = rng.choice(_SYLLOGISMS)
        terms = dict(zip("abc", rng.sample(_NONSENSE if rng.random() < 0.5 else _NOUNS, 3), strict=True))
        (vp, vc), (ip, ic) = ((tuple(p.format(**terms) for p in ps), c.format(**terms)) for ps, c in (valid, invalid))
        used = sorted(t for k, t in terms.items() if "{" + k + "}" in str(valid) + str(invalid))
        yield Fact(", ".join(used), _cap(_argument(vp, vc, True)), _cap(_argument(ip, ic, True)),
                   _cap(_argument(vp, vc, False)), _cap(_argument(ip, ic, False)))


def conditional(rng: random.Random) -> Iterator[Fact]:
    """Modus ponens vs affirming the consequent, or modus tollens vs denying the antecedent,
    on the same two clauses (``CLAUSES``: affirmative and negated forms)."""
    text = "Given that if {p} then {q}, and that {x}, it {v} that {y}."
    while True:
        (p, not_p), (q, not_q) = rng.sample(CLAUSES, 2)
        ponens = rng.random() < 0.5
        # (premise, conclusion) of the valid and the invalid form
        valid, invalid = ((p, q), (q, p)) if ponens else ((not_q, not_p), (not_p, not_q))
        four = [text.format(p=p, q=q, x=x, y=y, v=v) for (x, y), v in
                ((valid, "follows"), (invalid, "follows"), (valid, "does not follow"), (invalid, "does not follow"))]
        yield Fact(" / ".join(sorted((p, q))), *four)  # one fact per pair of clauses, whatever the form


# -- geography relations --------------------------------------------------------------------------

_COUNTRY_NAME = {"the South Africa": "South Africa", "the South Korea": "South Korea"}


def city_countries(path: Path) -> dict[str, str]:
    """City -> country from the trilemma table (``object_1``, ``correct_object_2``), keeping only
    cities with exactly one country (names shared by several places list them comma-separated)."""
    with path.open(newline="", encoding="utf-8") as f:
        out = {r["object_1"]: r["correct_object_2"] for r in csv.DictReader(f)}
    return {c: k for c, k in sorted(out.items()) if "," not in k}


def geography_relations(rng: random.Random, table: dict[str, str]) -> Iterator[Fact]:
    by_country: dict[str, list[str]] = {}
    for city, country in table.items():
        by_country.setdefault(country, []).append(city)
    used: set[str] = set()  # every city appears in one fact only
    while True:
        country = rng.choice(sorted(k for k, v in by_country.items() if len(set(v) - used) >= 2))
        a, b = rng.sample(sorted(set(by_country[country]) - used), 2)
        c = rng.choice(sorted(x for x, k in table.items() if k != country and x not in used))
        used |= {a, b, c}
        name = _COUNTRY_NAME.get(country, country)
        aff, neg = rng.choice((("{a} and {b} are in the same country.", "{a} and {b} are not in the same country."),
                               ("{a} is in the same country as {b}.", "{a} is not in the same country as {b}."),
                               ("{a} and {b} are both in {z}.", "{a} and {b} are not both in {z}.")))
        yield Fact(a, aff.format(a=a, b=b, z=name), aff.format(a=a, b=c, z=name),
                   neg.format(a=a, b=b, z=name), neg.format(a=a, b=c, z=name))


# -- assembly ---------------------------------------------------------------------------------

def rows(domain: str, truth_type: str, facts: Iterator[Fact], n_groups: int = GROUPS_PER_DOMAIN) -> list[Row]:
    """Three rows per fact (module docstring), skipping facts whose group or texts were already used."""
    out: list[Row] = []
    groups: set[str] = set()
    texts: set[str] = set()
    for fact in facts:
        if len(groups) == n_groups:
            break
        four = (fact.true, fact.false, fact.neg_true, fact.neg_false)
        if fact.group in groups or texts & set(four) or len(set(four)) < 4:
            continue
        negated = (fact.neg_true, 0) if len(groups) % 2 == 0 else (fact.neg_false, 1)
        for text, label, neg in ((fact.true, 1, 0), (fact.false, 0, 0), (*negated, 1)):
            out.append((text, label, fact.group, domain, truth_type, neg))
        groups.add(fact.group)
        texts |= set(four)
    return out


def generators(root: Path) -> dict[str, Callable[[random.Random], Iterator[Fact]]]:
    table = root / "trilemma_of_truth" / "city_locations.csv"
    return {"arithmetic": arithmetic, "comparison": comparison, "divisibility": divisibility,
            "syllogism": syllogism, "conditional": conditional,
            "geography_relations": lambda rng: geography_relations(rng, city_countries(table))}


TRUTH_TYPE = {"geography_relations": "empirical"}  # every other generated domain is logical


def generate(seed: int = 0, root: Path | None = None) -> dict[str, list[Row]]:
    """Every generated domain's rows; each domain has its own seeded stream."""
    gens = generators(root or data_root())
    return {d: rows(d, TRUTH_TYPE.get(d, "logical"), g(random.Random(f"truthgen:{seed}:{d}"))) for d, g in gens.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probes.truthgen", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None, help="data folder (default: the repository's data/)")
    ap.add_argument("--check", action="store_true", help="only compare with the files on disk; exit 1 if they differ")
    args = ap.parse_args(argv)
    root = args.root or data_root()
    stale = []
    for domain, data in generate(args.seed, root).items():
        path = domain_dir(root, "generated") / f"{domain}.csv"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != render(data):
                stale.append(str(path))
        else:
            write_rows(path, data)
            print(f"{path}: {len(data)} rows")
    if stale:
        print("out of date (run python -m probes.truthgen):", *stale, sep="\n  ", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
