"""Labelled examples for direction training, read from ``../shared/data`` or user files.

Every example is a ``text`` (what the model reads; activations are taken at its last token), a
binary ``label`` (1 = positive class: true / sycophantic) and a ``group`` (entity or question) used
to split so that test items never share an entity with training items.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "TRUTHSTEER_DATA"


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    group: str


@dataclass(frozen=True)
class Dataset:
    name: str
    examples: list[Example]
    path: str
    license: str

    def digest(self) -> str:
        h = hashlib.sha256()
        for e in self.examples:
            h.update(f"{e.label}\t{e.group}\t{e.text}\n".encode())
        return h.hexdigest()[:16]


def data_root() -> Path:
    """``$TRUTHSTEER_DATA`` or the ``shared/data`` folder beside the checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "data", here / "data"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"no data folder found; set {DATA_ENV}")


def _truthy(v: str) -> bool:
    return v.strip().upper() == "TRUE"


def statements_csv(path: Path, name: str, license: str) -> Dataset:
    """Trilemma-of-truth statement files: ``statement``, ``correct``, ``object_1``."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ex = [Example(r["statement"], int(_truthy(r["correct"])), r.get("object_1", "")) for r in rows]
    return Dataset(name, ex, str(path), license)


def chat_ab(question: str, answer_letter: str, tokenizer: object) -> str:
    """CAA convention: the user asks the A/B question, the assistant's reply starts ``(X``; the
    activation is read at the answer letter, the last token of the text."""
    messages = [{"role": "user", "content": question}]
    prefix: str = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, tokenize=False, add_generation_prompt=True
    )
    return prefix + "(" + answer_letter


def caa_ab(path: Path, name: str, license: str, tokenizer: object) -> Dataset:
    """CAA A/B items: two examples per item, matching (1) and not matching (0) behaviour."""
    ex: list[Example] = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        item = json.loads(line)
        q = item["question"]
        for key, label in (("answer_matching_behavior", 1), ("answer_not_matching_behavior", 0)):
            letter = str(item[key]).strip().strip("()")[:1]
            ex.append(Example(chat_ab(q, letter, tokenizer), label, f"{name}:{i}"))
    return Dataset(name, ex, str(path), license)


TRILEMMA_LICENSE = "CC-BY-4.0 (Savcisens & Eliassi-Rad 2025, trilemma-of-truth)"
CAA_LICENSE = "MIT (CAA, Rimsky et al. 2024) over CC-BY-4.0 (Anthropic model-written evals)"


def builtin(name: str, tokenizer: object | None = None, root: Path | None = None) -> Dataset:
    root = root or data_root()
    tri = root / "trilemma_of_truth"
    if name in ("cities", "word_types", "word_synonyms", "word_instances", "cities_synthetic"):
        fname = {"cities": "city_locations.csv", "cities_synthetic": "city_locations_synthetic.csv"}.get(
            name, f"{name}.csv"
        )
        return statements_csv(tri / fname, name, TRILEMMA_LICENSE)
    if name in ("caa_sycophancy", "caa_sycophancy_test"):
        if tokenizer is None:
            raise ValueError(f"dataset {name} needs the model's tokenizer (chat template)")
        fname = "generate_dataset_ab.sample1000.jsonl" if name == "caa_sycophancy" else "test_dataset_ab.jsonl"
        return caa_ab(root / "caa_sycophancy" / fname, name, CAA_LICENSE, tokenizer)
    raise KeyError(f"unknown dataset {name!r}")


def concat(name: str, parts: Sequence[Dataset]) -> Dataset:
    ex = [e for d in parts for e in d.examples]
    return Dataset(name, ex, ";".join(d.path for d in parts), "; ".join(sorted({d.license for d in parts})))


def group_split(examples: Iterable[Example], test_frac: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split by group (hash of group and seed), so no group is on both sides."""
    train: list[Example] = []
    test: list[Example] = []
    for e in examples:
        h = int(hashlib.sha256(f"{seed}:{e.group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (test if h < test_frac else train).append(e)
    return train, test


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
    return Dataset(data.name, out, data.path, data.license)
