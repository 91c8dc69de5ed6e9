"""The project's own truth-domain files: their format, a strict reader and where they live.

A truth-domain file is a CSV with the header ``text,label,group,domain,truth_type,negated``, one
short statement a row: ``label`` 1 = the statement is true (``1``/``0``/``true``/``false``),
``group`` the underlying fact (a statement, its false counterpart and their negations share one
group, so a group split never puts near-duplicates on both sides), ``domain`` the file's stem,
``truth_type`` one of :data:`TRUTH_TYPES` and ``negated`` whether the statement is a negation.

Files live in ``data/truth_domains/generated/`` (computed by :mod:`probes.truthgen`) and
``data/truth_domains/handwritten/`` (written by hand, origin in its ``PROVENANCE.md``); every
``*.csv`` there is one domain, named by its stem. Both are the project's own data (Apache-2.0),
except generated domains computed from licensed data (:data:`DERIVED_LICENSES`).
Invariant: a file that loads has only valid rows; anything else raises :class:`DatasetError`
naming the file and the row.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from probes.datasets import (
    Dataset,
    DatasetError,
    Example,
    _rows,
    common_truth_type,
    display_path,
    parse_label,
    require_columns,
)

TRUTH_TYPES = ("definitional", "empirical", "logical", "fictional", "ethical")
COLUMNS = ("text", "label", "group", "domain", "truth_type", "negated")
PROJECT_LICENSE = "Apache-2.0 (truthsteer's own data)"
# generated domains computed from licensed data keep that data's license
DERIVED_LICENSES = {
    "geography_relations": "CC-BY-4.0 (computed from trilemma-of-truth city_locations, Savcisens & "
    "Eliassi-Rad 2025; GeoNames)",
}
DOMAIN_DIRS = ("generated", "handwritten")


def domain_dir(root: Path, kind: str) -> Path:
    return root / "truth_domains" / kind


def domain_files(root: Path) -> dict[str, Path]:
    """Every truth-domain CSV under ``root`` by domain name (its stem); generated first. A name
    used by two files is an error, since each domain must be one set of facts."""
    out: dict[str, Path] = {}
    for kind in DOMAIN_DIRS:
        for path in sorted(domain_dir(root, kind).glob("*.csv")):
            if path.stem in out:
                raise DatasetError(f"{path}: domain {path.stem!r} is also {out[path.stem]}")
            out[path.stem] = path
    return out


def parse_flag(value: object, where: str) -> bool:
    """The ``negated`` column: the same spellings as a label."""
    try:
        return bool(parse_label(value, where))
    except DatasetError:
        raise DatasetError(f"{where}: negated {value!r} is not 1/0 or true/false") from None


def domain_csv(path: Path, name: str | None = None) -> Dataset:
    """Read one truth-domain file (format in the module docstring), checking every row."""
    rows = _rows(path)
    require_columns(rows, COLUMNS, str(path))
    ex: list[Example] = []
    for i, r in enumerate(rows):
        where = f"{path}: row {i + 1}"
        text, group = str(r["text"] or "").strip(), str(r["group"] or "").strip()
        if not text or not group:
            raise DatasetError(f"{where}: empty {'text' if not text else 'group'}")
        if r["domain"] != path.stem:
            raise DatasetError(f"{where}: domain {r['domain']!r} is not the file's name {path.stem!r}")
        if r["truth_type"] not in TRUTH_TYPES:
            raise DatasetError(f"{where}: truth_type {r['truth_type']!r} is not one of {', '.join(TRUTH_TYPES)}")
        ex.append(Example(text, parse_label(r["label"], where), group, path.stem,
                          parse_flag(r["negated"], where), str(r["truth_type"])))
    return Dataset(name or f"truth_{path.stem}", ex, display_path(path),
                   DERIVED_LICENSES.get(path.stem, PROJECT_LICENSE), common_truth_type(ex))


def render(rows: list[tuple[str, int, str, str, str, int]]) -> str:
    """A truth-domain file's text, reproducible byte for byte (``\\n`` line ends, minimal quoting)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    return buf.getvalue()


def write_rows(path: Path, rows: list[tuple[str, int, str, str, str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(rows), encoding="utf-8")


# -- vocabulary of the generated domains (probes.truthgen) ----------------------------------------

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """0 <= n < 1000 in British English words: ``144`` -> ``one hundred and forty-four``."""
    if not 0 <= n < 1000:
        raise ValueError(f"{n} is out of range 0..999")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    rest = n % 100
    return f"{_ONES[n // 100]} hundred" + (f" and {number_words(rest)}" if rest else "")


# (affirmative, negated) clauses for the conditional domain: any two make a rule "if P then Q"
CLAUSES = (
    ("the alarm rings", "the alarm does not ring"), ("the lamp is on", "the lamp is not on"),
    ("the road is wet", "the road is not wet"), ("Maria is at home", "Maria is not at home"),
    ("the shop is open", "the shop is not open"), ("the battery is charged", "the battery is not charged"),
    ("the door is locked", "the door is not locked"), ("the kettle is hot", "the kettle is not hot"),
    ("the train is late", "the train is not late"), ("the match is cancelled", "the match is not cancelled"),
    ("the plant gets water", "the plant does not get water"), ("the printer has paper", "the printer does not have paper"),
    ("Tom passes the exam", "Tom does not pass the exam"), ("the dog barks", "the dog does not bark"),
    ("the river floods", "the river does not flood"), ("the oven is on", "the oven is not on"),
    ("the window is open", "the window is not open"), ("the phone rings", "the phone does not ring"),
    ("the baby sleeps", "the baby does not sleep"), ("the light is green", "the light is not green"),
)
