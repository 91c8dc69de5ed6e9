"""Loaders of the built-in datasets in the repository's ``data/`` (origins, licenses: data/README.md).

=====================  ==================================================================  ========
name                   contents (label 1 = positive class)                                 group
=====================  ==================================================================  ========
cities                 trilemma city_locations: true statements, affirmative and negated   city
cities_synthetic       fictional cities ("neither"): every label 0, for score checks only  city
word_types / _synonyms / _instances   trilemma word statements, affirmative and negated    word
mmlu_true_false        "Question: ...\\nAnswer: ..." with the correct answer (1:3)          question
truthfulqa             TruthfulQA v0, every correct / incorrect answer as "Question/Answer" question
truthfulqa_v1          the same from the revised TruthfulQA.csv                            question
caa_sycophancy(_test)  CAA A/B items, at the answer letter (matching = 1)                  item
anthropic_nlp / anthropic_political   Anthropic sycophancy pools, same convention          item
caa_<behaviour>        CAA behaviour pools (hallucination, refusal, ...), same convention  item
truth_<domain>         one truth domain (below): true statements = 1                       fact
=====================  ==================================================================  ========

**Truth domains** (:func:`truth_domains`; built-in name ``truth_<domain>``, an underscore because
``:`` separates the parts of ``heldout:PRESET:PART`` specs). Every example carries ``domain``,
``truth_type`` and, where the source says, ``negated``:

=================================  ============  ==================================================
domain                             truth_type    source
=================================  ============  ==================================================
cities                             empirical     trilemma city_locations (negation column)
word_types / _synonyms / _instances definitional trilemma word files (negation column)
mmlu_true_false                    empirical     MMLU question + option; 1:3 true:false
truthfulqa                         empirical     TruthfulQA v0 answers, grouped by question
hallucination                      empirical     CAA false-premise items: each as two
                                                 "Question/Answer" texts, 1 = the answer that
                                                 rejects the premise; group = the question
<stem of a generated CSV>          per row       ``data/truth_domains/generated/`` (probes.truthgen)
<stem of a handwritten CSV>        per row       ``data/truth_domains/handwritten/``
=================================  ============  ==================================================

Any other name that is a path to a ``.csv`` / ``.jsonl`` file is read as a user file
(:func:`probes.datasets.generic_file`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from probes import truthdata
from probes.datasets import (
    Dataset,
    DatasetError,
    Example,
    _rows,
    common_truth_type,
    concat,
    data_root,
    display_path,
    generic_file,
    parse_label,
    require_columns,
)
from steering.chat import user_turn

TRILEMMA_LICENSE = "CC-BY-4.0 (Savcisens & Eliassi-Rad 2025, trilemma-of-truth)"
CAA_LICENSE = "MIT (CAA, Rimsky et al. 2024) over CC-BY-4.0 (Anthropic model-written evals)"
ANTHROPIC_LICENSE = "CC-BY-4.0 (Anthropic model-written evals, Perez et al. 2022)"
MMLU_LICENSE = "MIT (mmlu_true_false; MMLU, Hendrycks et al. 2021)"
TQA_LICENSE = "Apache-2.0 (TruthfulQA, Lin et al. 2022)"

_TRILEMMA = {
    "cities": "city_locations.csv",
    "cities_synthetic": "city_locations_synthetic.csv",
    "word_types": "word_types.csv",
    "word_synonyms": "word_synonyms.csv",
    "word_instances": "word_instances.csv",
}
_ANTHROPIC = {
    "anthropic_nlp": "sycophancy_on_nlp_survey.sample1500.jsonl",
    "anthropic_political": "sycophancy_on_political_typology_quiz.sample1500.jsonl",
}
# the licensed sets as truth domains: domain -> truth type
LICENSED_DOMAINS = {
    "cities": "empirical",
    "word_types": "definitional",
    "word_synonyms": "definitional",
    "word_instances": "definitional",
    "mmlu_true_false": "empirical",
    "truthfulqa": "empirical",
    "hallucination": "empirical",
}
_CAA_BEHAVIOURS = (
    "hallucination",
    "refusal",
    "myopic-reward",
    "survival-instinct",
    "corrigible-neutral-HHH",
    "coordinate-other-ais",
)


def statements_csv(path: Path, name: str, license: str) -> Dataset:
    """Trilemma-of-truth statement files: ``statement``, ``correct``, ``object_1`` and, where
    present, ``negation`` (read into :attr:`Example.negated`)."""
    rows = _rows(path)
    require_columns(rows, ("statement", "correct"), str(path))
    ex: list[Example] = []
    for i, r in enumerate(rows):
        where = f"{path}: row {i + 1}"
        neg = truthdata.parse_flag(r["negation"], where) if "negation" in r else None
        ex.append(Example(str(r["statement"]), parse_label(r["correct"], where), str(r.get("object_1", "")),
                          negated=neg))
    return Dataset(name, ex, display_path(path), license)


def qa_text(question: str, answer: str) -> str:
    """The statement form of a question/answer pair, as in ``mmlu_true_false``."""
    return f"Question: {question.strip()}\nAnswer: {answer.strip()}"


def mmlu_true_false(path: Path, name: str = "mmlu_true_false") -> Dataset:
    """``statement,label``; the group is the question (the text before ``Answer:``)."""
    rows = _rows(path)
    require_columns(rows, ("statement", "label"), str(path))
    ex: list[Example] = []
    for i, r in enumerate(rows):
        text = str(r["statement"])
        ex.append(Example(text, parse_label(r["label"], f"{path}: row {i + 1}"), text.split("\nAnswer:")[0]))
    return Dataset(name, ex, display_path(path), MMLU_LICENSE)


def truthfulqa(path: Path, name: str = "truthfulqa") -> Dataset:
    """Each ``Correct Answers`` (1) and ``Incorrect Answers`` (0) entry with its question."""
    rows = _rows(path)
    require_columns(rows, ("Question", "Correct Answers", "Incorrect Answers"), str(path))
    ex: list[Example] = []
    for i, r in enumerate(rows):
        q = str(r["Question"])
        for col, label in (("Correct Answers", 1), ("Incorrect Answers", 0)):
            for ans in str(r[col]).split(";"):
                if ans.strip():
                    ex.append(Example(qa_text(q, ans), label, f"tqa:{i}"))
    return Dataset(name, ex, display_path(path), TQA_LICENSE)


TRUTHFULQA_FOLD_SPLIT = 409  # two-fold CV by question: the first 409 of v0/mc_task.jsonl are fold 1


def truthfulqa_fold(data: Dataset, fold: int, root: Path | None = None) -> Dataset:
    """The answers in ``data`` (``truthfulqa``'s ``Question: ...\nAnswer: ...`` texts) whose question
    is in cross-validation fold ``fold``: 1 = the first :data:`TRUTHFULQA_FOLD_SPLIT` questions of
    ``truthfulqa/v0/mc_task.jsonl`` (the MC file's order, which the CSV's does not follow), 2 = the
    rest. An intervention trained on one fold is evaluated on the other (eval.truthfulqa_cv)."""
    if fold not in (1, 2):
        raise DatasetError(f"TruthfulQA fold must be 1 or 2, not {fold!r}")
    path = (root or data_root()) / "truthfulqa" / "v0" / "mc_task.jsonl"
    order = [json.loads(line)["question"].strip() for line in path.read_text().splitlines() if line.strip()]
    keep = set(order[:TRUTHFULQA_FOLD_SPLIT] if fold == 1 else order[TRUTHFULQA_FOLD_SPLIT:])
    ex = [e for e in data.examples if e.text.split("\nAnswer:")[0].removeprefix("Question: ") in keep]
    if not ex:
        raise DatasetError(f"{data.name}: no answer belongs to a TruthfulQA fold-{fold} question")
    return Dataset(f"{data.name}_fold{fold}", ex, data.path, data.license, data.truth_type)


def chat_ab(question: str, answer_letter: str, tokenizer: object) -> str:
    """CAA convention: the user asks the A/B question, the assistant's reply starts ``(X``; the
    activation is read at the answer letter, the last token of the text."""
    return user_turn(question, tokenizer) + "(" + answer_letter


def _letter(value: object, where: str) -> str:
    letter = str(value).strip().strip("()")[:1]
    if not letter:
        raise DatasetError(f"{where}: empty answer letter")
    return letter


def caa_ab(path: Path, name: str, license: str, tokenizer: object, strip_answer: bool = False) -> Dataset:
    """A/B items: two examples per item, matching (1) and not matching (0) behaviour. Anthropic's
    original prompts end in ``Answer:``, which ``strip_answer`` drops (the chat template takes
    its place)."""
    rows = _rows(path)
    require_columns(rows, ("question", "answer_matching_behavior", "answer_not_matching_behavior"), str(path))
    ex: list[Example] = []
    for i, item in enumerate(rows):
        q = str(item["question"])
        if strip_answer:
            q = q.removesuffix("Answer:").rstrip()
        for key, label in (("answer_matching_behavior", 1), ("answer_not_matching_behavior", 0)):
            ex.append(Example(chat_ab(q, _letter(item[key], f"{path}: row {i + 1}"), tokenizer), label, f"{name}:{i}"))
    return Dataset(name, ex, display_path(path), license)


def false_premise(path: Path, name: str = "truth_hallucination") -> Dataset:
    """CAA ``hallucination`` items (``question`` = premise question + ``Choices: (A) .. (B) ..``)
    as two "Question/Answer" statements each: 1 = the answer that rejects the false premise
    (``answer_not_matching_behavior``), 0 = the one that accepts it; group = the question."""
    rows = _rows(path)
    require_columns(rows, ("question", "answer_matching_behavior", "answer_not_matching_behavior"), str(path))
    ex: list[Example] = []
    for i, item in enumerate(rows):
        where = f"{path}: row {i + 1}"
        question, sep, choices = str(item["question"]).partition("\n\nChoices:\n")
        a, sep_b, b = choices.strip().removeprefix("(A) ").partition("\n (B) ")
        if not (sep and sep_b and a.strip() and b.strip()):
            raise DatasetError(f"{where}: expected 'question\\n\\nChoices:\\n (A) ...\\n (B) ...'")
        options = {"A": a, "B": b}
        for key, label in (("answer_not_matching_behavior", 1), ("answer_matching_behavior", 0)):
            letter = _letter(item[key], where)
            if letter not in options:
                raise DatasetError(f"{where}: {key} {item[key]!r} is not (A) or (B)")
            ex.append(Example(qa_text(question, options[letter]), label, question.strip()))
    return Dataset(name, ex, display_path(path), CAA_LICENSE)


def _tagged(data: Dataset, domain: str, truth_type: str) -> Dataset:
    ex = [dataclasses.replace(e, domain=domain, truth_type=truth_type) for e in data.examples]
    return Dataset(f"truth_{domain}", ex, data.path, data.license, common_truth_type(ex))


def truth_domain(domain: str, root: Path | None = None) -> Dataset:
    """One truth domain by name (table in the module docstring)."""
    root = root or data_root()
    kind = LICENSED_DOMAINS.get(domain)
    if kind is None:
        files = truthdata.domain_files(root)
        if domain not in files:
            raise DatasetError(f"unknown truth domain {domain!r} (have {', '.join(truth_domain_names(root))})")
        return truthdata.domain_csv(files[domain])
    if domain in _TRILEMMA:
        data = statements_csv(root / "trilemma_of_truth" / _TRILEMMA[domain], domain, TRILEMMA_LICENSE)
    elif domain == "hallucination":
        data = false_premise(root / "caa_behaviours" / "hallucination.jsonl")
    else:
        data = builtin(domain, None, root)
    return _tagged(data, domain, kind)


def truth_domain_names(root: Path | None = None) -> list[str]:
    """The licensed domains, then every generated and handwritten file's domain."""
    files = truthdata.domain_files(root or data_root())
    clash = sorted(set(files) & set(LICENSED_DOMAINS))
    if clash:
        raise DatasetError(f"{files[clash[0]]}: domain {clash[0]!r} is also a licensed data set")
    return [*LICENSED_DOMAINS, *files]


def truth_domains(root: Path | None = None) -> dict[str, Dataset]:
    """Every truth domain (module docstring) by name; each example carries ``domain``,
    ``truth_type`` and ``negated`` (None where the source does not say), and each Dataset its
    ``truth_type``. Raises :class:`DatasetError` naming the file and row of any bad file."""
    return {d: truth_domain(d, root) for d in truth_domain_names(root)}


def builtin_names() -> list[str]:
    return sorted(
        [*_TRILEMMA, "mmlu_true_false", "truthfulqa", "truthfulqa_v1", "caa_sycophancy", "caa_sycophancy_test",
         *_ANTHROPIC, *(f"caa_{b}" for b in _CAA_BEHAVIOURS), *(f"truth_{d}" for d in truth_domain_names()),
         *(f"biased_belief{kind}_{split}" for kind in ("", "_pressure", "_pressure_free")
           for split in _BB_SPLITS)]
    )


_BB_SPLITS = ("train", "validation", "test")


def biased_belief(name: str, tokenizer: object | None) -> Dataset:
    """``biased_belief_<split>`` (wrong vs correct letter under a stated wrong belief),
    ``biased_belief_pressure_<split>`` (biased vs neutral A/B prompt where the letter is predicted)
    and ``biased_belief_pressure_free_<split>`` (biased vs neutral free-form prompt at the
    assistant's opening), from :mod:`probes.biased_belief` with seed 0."""
    from probes import biased_belief as bb

    if tokenizer is None:
        raise DatasetError(f"dataset {name} needs the model's tokenizer (chat template)")
    split = name.rsplit("_", 1)[1]
    if name.startswith("biased_belief_pressure_free_"):
        return bb.pressure_pairs(bb.load_questions(), tokenizer, 0, split, form="free")
    build = bb.pressure_pairs if name.startswith("biased_belief_pressure_") else bb.sycophancy_pairs
    return build(bb.load_questions(), tokenizer, 0, split)


def builtin(name: str, tokenizer: object | None = None, root: Path | None = None) -> Dataset:
    root = root or data_root()
    if name.startswith("truth_"):
        return truth_domain(name.removeprefix("truth_"), root)
    if name in _TRILEMMA:
        return statements_csv(root / "trilemma_of_truth" / _TRILEMMA[name], name, TRILEMMA_LICENSE)
    if name == "mmlu_true_false":
        return mmlu_true_false(root / "mmlu_true_false" / "mmlu_true_false.csv")
    if name in ("truthfulqa", "truthfulqa_v1"):
        sub = "v0/TruthfulQA.csv" if name == "truthfulqa" else "TruthfulQA.csv"
        return truthfulqa(root / "truthfulqa" / sub, name)
    if name.startswith("biased_belief_") and name.rsplit("_", 1)[1] in _BB_SPLITS:
        return biased_belief(name, tokenizer)
    ab: tuple[Path, str, bool] | None = None
    if name in ("caa_sycophancy", "caa_sycophancy_test"):
        fname = "generate_dataset_ab.sample1000.jsonl" if name == "caa_sycophancy" else "test_dataset_ab.jsonl"
        ab = (root / "caa_sycophancy" / fname, CAA_LICENSE, False)
    elif name in _ANTHROPIC:
        ab = (root / "anthropic_sycophancy" / _ANTHROPIC[name], ANTHROPIC_LICENSE, True)
    elif name.startswith("caa_") and name[4:] in _CAA_BEHAVIOURS:
        ab = (root / "caa_behaviours" / f"{name[4:]}.jsonl", CAA_LICENSE, False)
    if ab is not None:
        if tokenizer is None:
            raise DatasetError(f"dataset {name} needs the model's tokenizer (chat template)")
        return caa_ab(ab[0], name, ab[1], tokenizer, strip_answer=ab[2])
    raise DatasetError(f"unknown dataset {name!r}: not a file and not one of {', '.join(builtin_names())}")


def load(spec: str, tokenizer: object | None = None, root: Path | None = None) -> Dataset:
    """A built-in name, a user ``.csv``/``.jsonl`` path, or several joined with ``+``."""
    parts = spec.split("+")
    if len(parts) > 1:
        return concat(spec, [load(p, tokenizer, root) for p in parts])
    path = Path(spec)
    if path.suffix in (".csv", ".jsonl") or path.is_file():
        return generic_file(path)
    return builtin(spec, tokenizer, root)
