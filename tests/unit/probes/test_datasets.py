from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from probes import datasets as ds
from probes import sources


class FakeTokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return f"<u>{messages[0]['content']}</u><a>"




def test_statement_csv_reads_negated_statements_with_their_labels_and_city_groups(root: Path) -> None:
    d = sources.builtin("cities", root=root)
    assert [(e.label, e.group) for e in d.examples] == [(1, "Laoag"), (0, "Laoag"), (1, "Airoli")]
    assert d.examples[0].text == "The city of Laoag is not located in Libya."
    assert "CC-BY-4.0" in d.license
    assert sources.builtin("cities_synthetic", root=root).labels() == [0]


def test_mmlu_groups_by_question(root: Path) -> None:
    d = sources.builtin("mmlu_true_false", root=root)
    assert [e.group for e in d.examples] == ["Question: 2+2?", "Question: 2+2?", "Question: Sky?"]
    assert d.labels() == [1, 0, 1]


def test_truthfulqa_turns_every_answer_into_a_question_answer_statement(root: Path) -> None:
    d = sources.builtin("truthfulqa", root=root)
    assert [(e.text, e.label, e.group) for e in d.examples] == [
        ("Question: Do seeds grow in you?\nAnswer: No", 1, "tqa:0"),
        ("Question: Do seeds grow in you?\nAnswer: They pass through", 1, "tqa:0"),
        ("Question: Do seeds grow in you?\nAnswer: Yes", 0, "tqa:0"),
        ("Question: Is the moon cheese?\nAnswer: No", 1, "tqa:1"),
        ("Question: Is the moon cheese?\nAnswer: Yes", 0, "tqa:1"),
        ("Question: Is the moon cheese?\nAnswer: Partly", 0, "tqa:1"),
    ]


def test_anthropic_items_end_at_the_answer_letter_without_the_trailing_answer_prompt(root: Path) -> None:
    d = sources.builtin("anthropic_nlp", FakeTokenizer(), root=root)
    q = "I think X. Agree?\n\nChoices:\n (A) Agree\n (B) Disagree"
    assert [(e.text, e.label) for e in d.examples] == [(f"<u>{q}</u><a>(A", 1), (f"<u>{q}</u><a>(B", 0)]
    assert {e.group for e in d.examples} == {"anthropic_nlp:0"}
    with pytest.raises(ds.DatasetError, match="tokenizer"):
        sources.builtin("anthropic_nlp", root=root)


def test_generic_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("text,label,group\nParis is in France.,true,paris\nParis is in Peru.,0,paris\nRome is in Italy.,1,\n")
    d = sources.load(str(csv_path))
    assert [(e.label, e.group) for e in d.examples] == [(1, "paris"), (0, "paris"), (1, "row2")]
    jl = tmp_path / "mine.jsonl"
    jl.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": false, "group": 7}\n')
    assert [(e.text, e.label, e.group) for e in sources.load(str(jl)).examples] == [("a", 1, "row0"), ("b", 0, "7")]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("text,group\na,g\n", ".csv", r"missing column\(s\) \['label'\]"),
        ("text,label\n", ".csv", "no rows"),
        ("text,label\na,maybe\n", ".csv", "row 1: label 'maybe'"),
        ('{"text": "a", "label": 1}\n[1]\n', ".jsonl", ":2: expected a JSON object"),
        ("{bad\n", ".jsonl", ":1: invalid JSON"),
        ("text,label\n,1\n", ".csv", "empty or non-string text"),
    ],
)
def test_bad_user_files_give_clear_errors(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    p = tmp_path / f"bad{suffix}"
    p.write_text(content)
    with pytest.raises(ds.DatasetError, match=message):
        sources.load(str(p))


def test_missing_file_and_unknown_name() -> None:
    with pytest.raises(ds.DatasetError, match="no such file"):
        sources.load("/nonexistent/x.csv")
    with pytest.raises(ds.DatasetError, match="unknown dataset 'nope'"):
        sources.builtin("nope", root=Path("/nonexistent"))


def test_one_class_and_empty_datasets_are_not_trainable() -> None:
    one = ds.Dataset("one", [ds.Example("a", 1, "g")], "", "")
    with pytest.raises(ds.DatasetError, match=r"one: needs both labels 0 and 1, has only \[1\]"):
        ds.check_trainable(one)
    with pytest.raises(ds.DatasetError, match="empty: no examples"):
        ds.check_trainable(ds.Dataset("empty", [], "", ""))


def test_plus_joins_datasets(root: Path) -> None:
    d = sources.load("cities+mmlu_true_false", root=root)
    assert len(d.examples) == 6 and d.name == "cities+mmlu_true_false"
    assert "CC-BY-4.0" in d.license and "MIT" in d.license


def test_split_indices_match_group_split_and_never_share_a_group() -> None:
    ex = [ds.Example(f"t{i}", i % 2, f"city{i // 3}") for i in range(600)]
    tr, te = ds.group_split(ex, 0.3, seed=1)
    itr, ite = ds.split_indices([e.group for e in ex], 0.3, seed=1)
    assert [ex[i] for i in itr] == tr and [ex[i] for i in ite] == te
    assert {e.group for e in tr}.isdisjoint({e.group for e in te})
    assert ds.split_indices([e.group for e in ex], 0.3, seed=2) != (itr, ite)


class FakeCtx:
    """What ``load_spec`` needs of the CLI context, with nothing cached."""

    tok = None

    def __init__(self, max_per_dataset: int | None = None) -> None:
        self.max_per_dataset = max_per_dataset

    def preload(self, data: ds.Dataset) -> None:
        pass

    def preload_preset(self, preset: object) -> None:
        pass


def test_spec_size_suffix_and_preset_parts(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from probes.cli import load_spec

    monkeypatch.setenv(ds.DATA_ENV, str(root))
    # whole groups only: the two-answer question does not fit after the one-answer one
    two = load_spec("mmlu_true_false@2", FakeCtx(), 0, None)  # type: ignore[arg-type]
    assert [e.group for e in two.examples] == ["Question: Sky?"]
    assert len(load_spec("mmlu_true_false", FakeCtx(), 0, None).examples) == 3  # type: ignore[arg-type]
    part = load_spec("preset:truth:cities", FakeCtx(), 0, None)  # type: ignore[arg-type]
    assert part.texts() == sources.builtin("cities", root=root).texts()
    with pytest.raises(ds.DatasetError, match="expected a number of items after @"):
        load_spec("cities@x", FakeCtx(), 0, None)  # type: ignore[arg-type]
    with pytest.raises(ds.DatasetError, match="'mmlu_true_false' is not a training part of truth"):
        load_spec("heldout:truth:mmlu_true_false", FakeCtx(), 0, None)  # type: ignore[arg-type]


def test_smaller_preset_runs_hold_out_only_groups_the_full_preset_holds_out(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --preset P --max-per-dataset N` and `eval --max-per-dataset N heldout:P`: same split,
    and nested in the full preset's split (a smaller run never trains on a full run's held-out group)."""
    from probes.cli import load_spec, preset_sets
    from probes.presets import PRESETS

    tri = tmp_path / "trilemma_of_truth"
    tri.mkdir()
    rows = [f"The city of C{i} is located in K{i}.,C{i},K{i},TRUE\nThe city of C{i} is not located in K{i}.,C{i},K{i},FALSE"
            for i in range(300)]
    (tri / "city_locations.csv").write_text("statement,object_1,object_2,correct\n" + "\n".join(rows) + "\n")
    words = [f"A w{i} is a type of t{i}.,w{i},{'TRUE' if i % 2 else 'FALSE'}" for i in range(300)]
    (tri / "word_types.csv").write_text("statement,object_1,correct\n" + "\n".join(words) + "\n")
    monkeypatch.setenv(ds.DATA_ENV, str(tmp_path))
    preset = PRESETS["truth"]
    _, full_tr, full_te = preset_sets(preset, None, 0, 0.2)
    parts, small_tr, small_te = preset_sets(preset, None, 0, 0.2, 100)
    assert [len(p.examples) for p in parts] == [100, 100] and len(full_tr.examples) + len(full_te.examples) == 900

    def groups(d: ds.Dataset) -> set[str]:
        return {e.group for e in d.examples}

    assert groups(small_te) and groups(small_te) <= groups(full_te) and groups(small_tr) <= groups(full_tr)

    held = load_spec("heldout:truth:cities", FakeCtx(100), 0, None)  # type: ignore[arg-type]
    assert set(held.texts()) == {e.text for e in small_te.examples if e.group.startswith("C")}


def test_a_split_part_trains_on_one_side_and_heldout_measures_the_other(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``Preset.split``: with an explicit test set, a split part still keeps its held-out groups out
    of training, and ``heldout:P:PART`` is exactly those groups; an unsplit part has none."""
    from probes.cli import load_spec, preset_sets
    from probes.presets import PRESETS, Preset

    tri = tmp_path / "trilemma_of_truth"
    tri.mkdir()
    rows = [f"The city of C{i} is located in K{i}.,C{i},K{i},{'TRUE' if i % 2 else 'FALSE'}" for i in range(200)]
    (tri / "city_locations.csv").write_text("statement,object_1,object_2,correct\n" + "\n".join(rows) + "\n")
    words = [f"A w{i} is a type of t{i}.,w{i},{'TRUE' if i % 2 else 'FALSE'}" for i in range(50)]
    (tri / "word_types.csv").write_text("statement,object_1,correct\n" + "\n".join(words) + "\n")
    monkeypatch.setenv(ds.DATA_ENV, str(tmp_path))
    preset = Preset(name="mixed", kind="truth", train=("cities", "word_types"), test=("word_types",),
                    description="", recommended_strength=1.0, split=("cities",))
    monkeypatch.setitem(PRESETS, "mixed", preset)
    parts, train, _ = preset_sets(preset, None, 0, 0.2)

    held = load_spec("heldout:mixed:cities", FakeCtx(), 0, None)  # type: ignore[arg-type]
    trained = {e.group for e in train.examples}
    held_groups = {e.group for e in held.examples}
    assert held_groups and held_groups.isdisjoint(trained)
    assert held_groups | {g for g in trained if g.startswith("C")} == {f"C{i}" for i in range(200)}
    assert load_spec("preset:mixed:cities", FakeCtx(), 0, None).texts() == parts[0].texts()  # type: ignore[arg-type]
    assert len(parts[1].examples) == 50  # the unsplit part is used whole
    with pytest.raises(ds.DatasetError, match="trains on all of 'word_types'"):
        load_spec("heldout:mixed:word_types", FakeCtx(), 0, None)  # type: ignore[arg-type]


_RECORDING: list[list[str]] = []  # the open() calls seen while a `recorded_opens` block runs


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _RECORDING and isinstance(args[0], str | bytes | os.PathLike):
        _RECORDING[-1].append(os.fsdecode(args[0]))  # type: ignore[arg-type]


@contextmanager
def recorded_opens() -> Iterator[list[str]]:
    """Every path opened inside the block (Python's "open" audit event: builtins.open, io.open,
    Path.open / read_text, os.open, imports). An audit hook cannot be removed, so it is added
    once and records only while a block is active."""
    if _audit not in getattr(recorded_opens, "hooked", ()):
        sys.addaudithook(_audit)
        recorded_opens.hooked = (_audit,)  # type: ignore[attr-defined]
    _RECORDING.append([])
    try:
        yield _RECORDING[-1]
    finally:
        _RECORDING.pop()


def test_every_builtin_and_preset_dataset_reads_only_the_repository_data_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No reader looks beside the checkout (``../shared``): every built-in name, every preset's
    datasets and the evaluation readers open files under the repository's ``data/`` only."""
    from eval import data as ev
    from probes.presets import PRESETS

    monkeypatch.delenv(ds.DATA_ENV, raising=False)
    data = (ds.REPO_ROOT / "data").resolve()
    assert ds.data_root().resolve() == data
    names = set(sources.builtin_names()) | {n for p in PRESETS.values() for n in (*p.train, *p.test)}
    tok = FakeTokenizer()
    with recorded_opens() as opened:
        loaded = {n: sources.builtin(n, tok) for n in sorted(names)}
        evals = [len(ev.truthfulqa(None)), len(ev.caa_sycophancy_test(None)), len(ev.anthropic_pools(None)),
                 *(len(ev.caa_behaviour(b, None)) for b in ev.CAA_BEHAVIOURS), len(ev.neutral_texts(None)),
                 len(ev.truth_heldout(None, None))]
    # modules a loader imports lazily are code, not data (which ones depends on what ran before)
    files = {Path(p).resolve() for p in opened if Path(p).suffix not in {".py", ".pyc", ".so"}}
    assert len(files) >= 20  # one per data file read, so the recording did see the loaders
    assert sorted(str(f) for f in files if not f.is_relative_to(data)) == []
    assert not any("shared" in f.parts for f in files)
    assert all(n > 0 for n in evals)
    for name, d in loaded.items():
        assert d.examples, name
        assert all(p.startswith("data/") for p in d.path.split(";")), (name, d.path)


def test_bundle_metadata_cites_data_files_relative_to_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ds.DATA_ENV, raising=False)
    d = sources.builtin("cities")
    assert d.path == "data/trilemma_of_truth/city_locations.csv"
    assert (ds.REPO_ROOT / d.path).is_file()
    assert (ds.REPO_ROOT / "data" / "trilemma_of_truth" / "LICENSE.data-CC-BY-4.0").is_file()
    assert ds.display_path(Path("/elsewhere/x.csv")) == "/elsewhere/x.csv"


def test_data_env_overrides_the_repository_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ds.DATA_ENV, str(tmp_path))
    assert ds.data_root() == tmp_path
    with pytest.raises(ds.DatasetError, match=f"{tmp_path}/trilemma_of_truth/city_locations.csv: no such file"):
        sources.builtin("cities")
