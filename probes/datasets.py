"""Labelled examples for direction training: the core types, group splits and user files.

Every example is a ``text`` (what the model reads; activations are taken at its last token), a
binary ``label`` (1 = positive class: true / sycophantic) and a ``group`` (entity or question) used
to split so that test items never share an entity with training items.

User files (``truthsteer probes train --dataset my.csv``) are CSV with a header or JSONL with one
object per line, with the fields ``text`` and ``label`` (``1``/``0``, ``true``/``false``) and an
optional ``group`` (rows without a group are their own group). The built-in datasets are in
:mod:`probes.sources`; their files ship with the repository in ``data/`` (:func:`data_root`), and
nothing outside that folder (or ``$TRUTHSTEER_DATA``) is ever read for them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from steering.errors import TruthsteerError

DATA_ENV = "TRUTHSTEER_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent


class DatasetError(TruthsteerError, ValueError):
    """A dataset file is missing, malformed or unusable for training; the message names it."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    group: str
    domain: str = ""  # truth domain (:func:`probes.sources.truth_domains`); "" elsewhere
    negated: bool | None = None  # a negated statement; None where the source does not say
    truth_type: str = ""  # definitional / empirical / logical / fictional / ethical; "" unknown


@dataclass(frozen=True)
class Dataset:
    """Examples with their provenance. :meth:`digest` (the activation-cache key) depends on the
    texts, labels and groups only, never on the optional fields."""

    name: str
    examples: list[Example]
    path: str
    license: str
    truth_type: str = ""  # the examples' common truth type, "mixed" when they differ, "" unknown

    def digest(self) -> str:
        h = hashlib.sha256()
        for e in self.examples:
            h.update(f"{e.label}\t{e.group}\t{e.text}\n".encode())
        return h.hexdigest()[:16]

    def labels(self) -> list[int]:
        return [e.label for e in self.examples]

    def texts(self) -> list[str]:
        return [e.text for e in self.examples]


def data_root() -> Path:
    """``$TRUTHSTEER_DATA`` if set, else the repository's own ``data/`` folder."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else REPO_ROOT / "data"


def display_path(path: Path) -> str:
    """How bundle metadata cites a data file: relative to the repository (``data/...``) when the
    file is inside it, else the path as given."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def parse_label(value: object, where: str) -> int:
    """``1``/``0``, ``true``/``false`` (any case), Python bools and ints 0/1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return 1
    if s in _FALSE:
        return 0
    raise DatasetError(f"{where}: label {value!r} is not 1/0 or true/false")


def _rows(path: Path) -> list[Mapping[str, object]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        rows: list[Mapping[str, object]] = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{i}: invalid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{i}: expected a JSON object")
            rows.append(obj)
        return rows
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    raise DatasetError(f"{path}: unsupported file type (expected .csv or .jsonl)")


def require_columns(rows: list[Mapping[str, object]], columns: Iterable[str], where: str) -> None:
    if not rows:
        raise DatasetError(f"{where}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing} (has {sorted(rows[0])})")


def generic_file(path: Path, name: str | None = None, license: str = "user data") -> Dataset:
    """A user's ``text,label[,group]`` CSV or JSONL file."""
    rows = _rows(path)
    require_columns(rows, ("text", "label"), str(path))
    ex: list[Example] = []
    for i, r in enumerate(rows):
        where = f"{path}: row {i + 1}"
        text = r.get("text")
        if not isinstance(text, str) or not text:
            raise DatasetError(f"{where}: empty or non-string text")
        group = r.get("group")
        ex.append(Example(text, parse_label(r.get("label"), where), str(group) if group not in (None, "") else f"row{i}"))
    return Dataset(name or path.stem, ex, str(path), license)


def check_trainable(data: Dataset) -> None:
    """Raise :class:`DatasetError` unless ``data`` has both classes (and so is not empty)."""
    if not data.examples:
        raise DatasetError(f"{data.name}: no examples")
    classes = set(data.labels())
    if classes != {0, 1}:
        raise DatasetError(f"{data.name}: needs both labels 0 and 1, has only {sorted(classes)}")


def common_truth_type(examples: Iterable[Example]) -> str:
    """The one truth type of ``examples``, ``"mixed"`` when they differ, ``""`` when none is known."""
    kinds = {e.truth_type for e in examples}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "")


def concat(name: str, parts: Iterable[Dataset]) -> Dataset:
    parts = list(parts)
    ex = [e for d in parts for e in d.examples]
    return Dataset(name, ex, ";".join(d.path for d in parts), "; ".join(sorted({d.license for d in parts})),
                   common_truth_type(ex))


def in_test(group: str, test_frac: float, seed: int, salt: str = "") -> bool:
    """Whether ``group`` falls on the test side: a seeded hash of the group, so no group is on
    both sides and the split does not depend on the other items. A ``salt`` gives a split
    independent of the unsalted one (a validation split inside a training split)."""
    h = int(hashlib.sha256(f"{salt}{seed}:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < test_frac


def group_split(examples: Iterable[Example], test_frac: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split by group, so no group is on both sides."""
    train: list[Example] = []
    test: list[Example] = []
    for e in examples:
        (test if in_test(e.group, test_frac, seed) else train).append(e)
    return train, test


def split_indices(groups: Iterable[str], test_frac: float, seed: int, salt: str = "") -> tuple[list[int], list[int]]:
    """:func:`group_split` on positions: (train indices, test indices)."""
    train: list[int] = []
    test: list[int] = []
    for i, g in enumerate(groups):
        (test if in_test(g, test_frac, seed, salt) else train).append(i)
    return train, test


def split_dataset(data: Dataset, test_frac: float, seed: int) -> tuple[Dataset, Dataset]:
    tr, te = group_split(data.examples, test_frac, seed)
    return (
        Dataset(data.name + ":train", tr, data.path, data.license, data.truth_type),
        Dataset(data.name + ":test", te, data.path, data.license, data.truth_type),
    )


def subsample(data: Dataset, n: int | None, seed: int) -> Dataset:
    """At most ``n`` examples, whole groups at a time, chosen by a seeded hash of the group."""
    if n is None or len(data.examples) <= n:
        return data
    groups: dict[str, list[Example]] = {}
    for e in data.examples:
        groups.setdefault(e.group, []).append(e)
    # salted apart from group_split, so a subsample is not biased towards either side of a split
    order = sorted(groups, key=lambda g: hashlib.sha256(f"subsample:{seed}:{g}".encode()).hexdigest())
    out: list[Example] = []
    for g in order:
        if len(out) + len(groups[g]) > n:
            break
        out.extend(groups[g])
    return Dataset(data.name, out, data.path, data.license, data.truth_type)
