"""``truthsteer probes train / eval / compare`` end to end on a tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.cli.main import main
from steering.bundle import load_bundle
from tests.support.tiny import make_tiny_llama


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _write_dataset(path: Path) -> None:
    # truth is "city in its own country"; the last token (the country) carries it
    right = {"paris": "france", "rome": "italy", "lima": "peru"}
    lines = ["text,label,group"]
    for rep in range(6):
        for city, country in right.items():
            for other in right.values():
                lines.append(f"{city} is in {other},{int(other == country)},{city}{rep}")
    path.write_text("\n".join(lines) + "\n")


def test_train_eval_compare_round_trip(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRUTHSTEER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mine.csv"
    _write_dataset(data)
    out = tmp_path / "directions" / "mine.safetensors"
    argv = ["probes", "train", "--model", str(tiny_model), "--dataset", str(data), "--method", "pca",
            "--kind", "truth", "--seed", "3", "--test-frac", "0.34", "--out", str(out)]
    assert main(argv) == 0
    b = load_bundle(out)
    assert b.name == "mine" and b.meta.kind == "truth"
    assert b.meta.layers == [0, 1, 2] and b.meta.model.hidden_size == 16
    assert b.meta.training.method == "pca" and b.meta.training.seed == 3
    assert [(d.name, d.license, d.rows) for d in b.meta.training.datasets] == [("mine", "user data", 54)]
    assert b.meta.metrics["n_train"] + b.meta.metrics["n_test"] == 54
    # the texts repeat across groups, so the test split's activations come from the train split's
    # (same text, same activations): one extraction, one cache file
    assert len(list((tmp_path / "cache" / "activations").glob("*.safetensors"))) == 1

    again = tmp_path / "again.safetensors"
    assert main([*argv[:-1], str(again)]) == 0
    b2 = load_bundle(again)
    for k in b.vectors:
        assert torch.equal(b.vectors[k], b2.vectors[k])

    capsys.readouterr()
    report = tmp_path / "eval" / "mine"
    assert main(["probes", "eval", "--model", str(tiny_model), "--bundle", str(out), "--dataset", str(data),
                 "--out", str(report)]) == 0
    table = capsys.readouterr().out
    assert "| dataset | n (pos) | probe AUROC |" in table and "| 54 (18) |" in table
    assert (report.with_suffix(".md")).is_file() and (report.with_suffix(".json")).is_file()

    rep_dir = tmp_path / "reports"
    assert main(["probes", "compare", "--model", str(tiny_model), "--datasets", f"{data},{data}",
                 "--out", str(rep_dir), "--test-frac", "0.34"]) == 0
    text = (rep_dir / "report.md").read_text()
    assert "Mahalanobis cosine" in text and (rep_dir / "similarity.png").is_file()


def test_one_class_dataset_is_refused_with_a_clear_error(tiny_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "one.csv"
    data.write_text("text,label\nparis is in france,1\nrome is in italy,1\n")
    rc = main(["probes", "train", "--model", str(tiny_model), "--dataset", str(data), "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2
    assert "one.csv: needs both labels 0 and 1, has only [1]" in capsys.readouterr().err


def test_activations_do_not_depend_on_batching_or_order(tiny_model: Path) -> None:
    from probes.extract import last_token_activations, load_hf

    model, tok = load_hf(tiny_model)
    texts = ["paris is in france", "rome is not in peru", "lima", "paris is not in italy rome"]
    batched = last_token_activations(model, tok, texts, batch_size=4, progress=False)
    for i, t in enumerate(texts):
        alone = last_token_activations(model, tok, [t], batch_size=1, progress=False)
        torch.testing.assert_close(batched[i], alone[0], rtol=1e-5, atol=1e-5)


def test_curve_and_train_selection_options_through_the_cli(tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    monkeypatch.setenv("TRUTHSTEER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mine.csv"
    _write_dataset(data)  # 18 groups of 3
    base = ["probes", "curve", "--model", str(tiny_model), "--dataset", str(data), "--test-dataset", str(data)]
    out = tmp_path / "curve"
    assert main([*base, "--sizes", "9,18", "--select-frac", "0.34", "--out", str(out)]) == 0
    pts = json.loads((out / "curve.json").read_text())
    assert [(p["groups"], p["examples"], p["c"]) for p in pts] == [(9, 27, 0.1), (9, 27, 1.0), (18, 54, 0.1),
                                                                   (18, 54, 1.0)]
    assert (out / "curve.md").is_file() and (out / "curve.png").is_file()
    capsys.readouterr()
    assert main([*base, "--sizes", "99", "--out", str(out)]) == 2
    assert "size 99 is outside 1..18" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--sizes", "9,x", "--out", str(out)])
    assert exc.value.code == 2 and "expected comma-separated ints, got '9,x'" in capsys.readouterr().err

    bundle = tmp_path / "sel.safetensors"
    assert main(["probes", "train", "--model", str(tiny_model), "--dataset", str(data), "--test-frac", "0.34",
                 "--probe-c", "2", "--select-frac", "0.34", "--out", str(bundle)]) == 0
    m = load_bundle(bundle).meta
    assert (m.metrics["probe_c"], m.metrics["select_frac"]) == (2.0, 0.34) and m.metrics["n_validation"] > 0
    assert m.training.notes == "probe: logistic, C=2, layer chosen on a 0.34 validation split of the training groups"
    capsys.readouterr()
    assert main(["probes", "train", "--model", str(tiny_model), "--dataset", str(data), "--select-frac", "0.001",
                 "--out", str(tmp_path / "none.safetensors")]) == 2
    assert "the validation split (0.001 of" in capsys.readouterr().err


def test_shared_prefix_extraction_equals_one_full_pass_per_text(tiny_model: Path) -> None:
    """A/B items share their prefix's forward pass; each text's activation is the one a full pass gives."""
    from probes.extract import _full_passes, last_token_activations, load_hf

    model, tok = load_hf(tiny_model)
    stems = ["paris is in", "rome is not in", "lima"]
    texts = [f"{s} {last}" for s in stems for last in ("france", "peru")] + ["lima is in peru"]
    shared = last_token_activations(model, tok, texts, batch_size=2, progress=False)
    ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert len({tuple(x[:-1]) for x in ids}) < len(texts)  # the shared-prefix path was taken
    full = _full_passes(model, tok, ids, 1, False)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    assert not torch.equal(shared[0], shared[1])  # the last token still matters
