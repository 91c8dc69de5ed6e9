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
=====================  ==================================================================  ========

Any other name that is a path to a ``.csv`` / ``.jsonl`` file is read as a user file
(:func:`probes.datasets.generic_file`).
"""

from __future__ import annotations

from pathlib import Path

from probes.datasets import (
    Dataset,
    DatasetError,
    Example,
    _rows,
    concat,
    data_root,
    display_path,
    generic_file,
    parse_label,
    require_columns,
)

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
_CAA_BEHAVIOURS = (
    "hallucination",
    "refusal",
    "myopic-reward",
    "survival-instinct",
    "corrigible-neutral-HHH",
    "coordinate-other-ais",
)


def statements_csv(path: Path, name: str, license: str) -> Dataset:
    """Trilemma-of-truth statement files: ``statement``, ``correct``, ``object_1``."""
    rows = _rows(path)
    require_columns(rows, ("statement", "correct"), str(path))
    ex = [
        Example(str(r["statement"]), parse_label(r["correct"], f"{path}: row {i + 1}"), str(r.get("object_1", "")))
        for i, r in enumerate(rows)
    ]
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


def chat_ab(question: str, answer_letter: str, tokenizer: object) -> str:
    """CAA convention: the user asks the A/B question, the assistant's reply starts ``(X``; the
    activation is read at the answer letter, the last token of the text."""
    messages = [{"role": "user", "content": question}]
    prefix: str = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, tokenize=False, add_generation_prompt=True
    )
    return prefix + "(" + answer_letter


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


def builtin_names() -> list[str]:
    return sorted(
        [*_TRILEMMA, "mmlu_true_false", "truthfulqa", "truthfulqa_v1", "caa_sycophancy", "caa_sycophancy_test",
         *_ANTHROPIC, *(f"caa_{b}" for b in _CAA_BEHAVIOURS)]
    )


def builtin(name: str, tokenizer: object | None = None, root: Path | None = None) -> Dataset:
    root = root or data_root()
    if name in _TRILEMMA:
        return statements_csv(root / "trilemma_of_truth" / _TRILEMMA[name], name, TRILEMMA_LICENSE)
    if name == "mmlu_true_false":
        return mmlu_true_false(root / "mmlu_true_false" / "mmlu_true_false.csv")
    if name in ("truthfulqa", "truthfulqa_v1"):
        sub = "v0/TruthfulQA.csv" if name == "truthfulqa" else "TruthfulQA.csv"
        return truthfulqa(root / "truthfulqa" / sub, name)
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
