from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.evaluate import (
    evaluate,
    expected_calibration_error,
    paired_accuracy,
    probe_probabilities,
)
from probes.methods import METHODS, auroc, direction, pairs, steering_vector
from probes.report import Split, compare, cosine_matrix, write
from probes.train import build_bundle, platt, recommend_layers
from steering.bundle import DatasetRef, load_bundle, save_bundle
from tests.support.tiny import INFO


def planted(n: int, h: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Isotropic noise (sd 0.2) plus ``scale`` times a planted unit direction for positives;
    groups of 2 (one positive, one negative)."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(h, generator=g)
    true /= true.norm()
    y = torch.arange(n) % 2
    noise = torch.randn(n, h, generator=g) * 0.2
    x = noise + scale * y[:, None].float() * true
    return x, y, true, [f"g{i // 2}" for i in range(n)]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_recovers_a_planted_direction(method: str) -> None:
    # overlapping classes (separation 2.5 noise sd), so the logistic optimum is unique
    x, y, true, groups = planted(2000, 16, seed=0, scale=0.5)
    d, bias = direction(method, x, y, groups, seed=0)  # type: ignore[arg-type]
    cos = float(d @ true / d.norm())
    assert cos > 0.99
    scores = (x @ d + bias).numpy()
    assert ((scores > 0).astype(int) == y.numpy()).mean() > 0.85


def test_steering_vector_has_the_class_mean_difference_along_the_direction() -> None:
    x, y, true, _ = planted(400, 16, seed=1)
    v = steering_vector(true * 5.0, x, y)
    md = x[y == 1].mean(0) - x[y == 0].mean(0)
    torch.testing.assert_close(v, true * float(md @ true))


def test_pairs_prefer_the_same_group_then_pair_leftovers() -> None:
    labels = [1, 0, 1, 1, 0, 0]
    groups = ["a", "a", "b", "b", "c", "d"]
    p = pairs(labels, groups, seed=0)
    assert p[0] == (0, 1)
    assert sorted(a for a, _ in p) == [0, 2, 3] and sorted(b for _, b in p) == [1, 4, 5]


def test_auroc_and_ece_on_hand_computed_cases() -> None:
    # positives 0.8, 0.4; negatives 0.6, 0.2: 3 of 4 pairs ordered correctly
    assert auroc(np.array([0.8, 0.4, 0.6, 0.2]), np.array([1, 1, 0, 0])) == 0.75
    assert auroc(np.array([0.3, 0.4]), np.array([1, 1])) is None
    # bin [0.2, 0.3): confidence 0.25, accuracy 0.5; bin [0.9, 1]: confidence 0.95, accuracy 1.0
    ece = expected_calibration_error(np.array([0.25, 0.25, 0.95, 0.95]), np.array([1, 0, 1, 1]))
    assert ece == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)
    assert paired_accuracy(np.array([0.9, 0.1, 0.2, 0.2, 0.3, 0.5]), np.array([1, 0, 1, 0, 1, 0]), ["a", "a", "b", "b", "c", "c"]) == 0.5


def test_platt_recovers_the_maximum_likelihood_scaling() -> None:
    # at score +1: 3 positives, 1 negative; at -1: the reverse -> sigmoid(a + b) = 3/4, b = 0
    scores = np.array([1.0, 1, 1, 1, -1, -1, -1, -1])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    c = platt(scores, labels, seed=0)
    assert c.a == pytest.approx(math.log(3), abs=1e-3)
    assert c.b == pytest.approx(0.0, abs=1e-3)


def test_recommend_layers_centres_on_the_best_allowed_layer() -> None:
    assert recommend_layers([0.99, 0.6, 0.7, 0.9, 0.8, 0.6, 0.5, 0.99], n=3, min_layer_frac=0.15) == (3, [2, 3, 4])
    assert recommend_layers([0.5, 0.9, 0.6, 0.6], n=3, min_layer_frac=0.0) == (1, [0, 1, 2])


def _layered(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    n, L, H = 300, INFO.num_layers, INFO.hidden_size
    y = torch.arange(n) % 2
    plant = torch.zeros(L, H)
    plant[2, 3] = 4.0
    return torch.randn(n, L, H, generator=g) + y[:, None, None] * plant, y, [f"g{i // 2}" for i in range(n)]


@pytest.mark.parametrize("method", METHODS)
def test_bundle_training_is_reproducible_and_round_trips(method: str, tmp_path: Path) -> None:
    x, y, groups = _layered(0)

    def train(seed: int):  # type: ignore[no-untyped-def]
        return build_bundle(
            name="t", kind="truth", model=INFO, train=x[:200], ytr=y[:200], test=x[200:], yte=y[200:],
            datasets=[DatasetRef(name="synthetic", license="CC0")], seed=seed, recommended_strength=1.0,
            min_layer_frac=0.0, method=method, groups=groups[:200], created_at="2025-01-01T00:00:00Z",
        )

    a, b = train(0), train(0)
    assert a.meta == b.meta
    for k in a.vectors:
        assert torch.equal(a.vectors[k], b.vectors[k])
    assert a.probe_weight is not None and b.probe_weight is not None
    assert torch.equal(a.probe_weight, b.probe_weight)
    assert a.meta.training.method == method and a.meta.training.seed == 0
    assert a.meta.probe is not None and a.meta.probe.layer == 2
    assert a.meta.metrics["direction_auroc.2"] > 0.95
    assert float(a.unit(2)[3]) > 0.9
    loaded = load_bundle(save_bundle(a, tmp_path / "t.safetensors"))
    assert loaded.meta == a.meta
    ev = evaluate(loaded, x[200:], y[200:].tolist(), groups[200:], "synthetic")
    assert ev.auroc is not None and ev.auroc > 0.95
    assert ev.direction_auroc[2] == pytest.approx(a.meta.metrics["direction_auroc.2"])
    probs = probe_probabilities(loaded, x[200:])
    assert ev.mean_score == pytest.approx(float(probs.mean()))
    assert ev.confidence == pytest.approx(float(np.abs(probs - 0.5).mean()))
    neither = evaluate(loaded, x[200:], [0] * 100, groups[200:], "neither")  # one class: only the mean
    assert (neither.auroc, neither.accuracy, neither.ece, neither.paired_accuracy) == (None, None, None, None)
    assert neither.mean_score == ev.mean_score


def test_cosine_and_mahalanobis_cosine_on_hand_computed_cases() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    np.testing.assert_allclose(cosine_matrix([a, b]), [[1, 2**-0.5], [2**-0.5, 1]], rtol=1e-12)
    # data varying only along the first axis: b scores the data exactly like a
    cov = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(cosine_matrix([a, b], cov), [[1, 1], [1, 1]], rtol=1e-12)


def test_compare_report_transfer_and_geometry(tmp_path: Path) -> None:
    x1, y1, _ = _layered(1)
    x2, y2, _ = _layered(2)
    x3 = torch.randn(300, INFO.num_layers, INFO.hidden_size, generator=torch.Generator().manual_seed(3))
    y3 = torch.arange(300) % 2
    x3[:, 2, 5] += 4.0 * y3  # another concept: a different dimension
    splits = [Split(n, x[:200], y[:200], [str(i) for i in range(200)], x[200:], y[200:])
              for n, x, y in (("a", x1, y1), ("b", x2, y2), ("c", x3, y3))]
    rep = compare(splits, "mean-diff", seed=0)
    assert rep.layer == 2
    assert rep.transfer[0, 1] > 0.95 and rep.transfer[1, 0] > 0.95 and rep.transfer[2, 2] > 0.95
    assert 0.35 < rep.transfer[0, 2] < 0.65
    assert rep.cosine[0, 1] > 0.9 and abs(rep.cosine[0, 2]) < 0.3
    assert rep.mahalanobis[0, 1] > 0.9
    path = write(rep, tmp_path / "r", "Test report")
    text = path.read_text()
    assert "geometry at layer 2" in text and "| a | 1.000 |" not in text.split("Transfer")[0]
    assert all((tmp_path / "r" / f).stat().st_size > 1000 for f in ("auroc_by_layer.png", "similarity.png", "transfer.png"))


def test_validation_selection_keeps_the_test_set_out_of_the_layer_choice() -> None:
    from probes.datasets import split_indices
    from probes.train import validation_aurocs

    x, y, groups = _layered(0)  # signal planted at layer 2 in every example
    xte, yte = x[200:].clone(), y[200:]
    xte[:, 2, 3] += 8.0 * (0.5 - yte.float())  # the test data alone say "anything but layer 2" (reversed there)
    common = dict(name="t", kind="truth", model=INFO, train=x[:200], ytr=y[:200], test=xte, yte=yte,
                  datasets=[DatasetRef(name="synthetic", license="CC0")], seed=0, recommended_strength=1.0,
                  min_layer_frac=0.0, groups=groups[:200], created_at="2025-01-01T00:00:00Z")
    on_test = build_bundle(**common)  # type: ignore[arg-type]
    on_val = build_bundle(**common, select_frac=0.25, probe_c=1.0)  # type: ignore[arg-type]
    assert on_test.meta.probe is not None and on_test.meta.probe.layer != 2
    assert on_val.meta.probe is not None and on_val.meta.probe.layer == 2
    val, n_val = validation_aurocs(x[:200], y[:200], groups[:200], 0.25, 0, 1.0)
    assert on_val.meta.metrics["validation_auroc"] == val[2] and val[2] is not None and val[2] > 0.95
    assert on_val.meta.metrics["n_validation"] == n_val
    assert (on_val.meta.metrics["probe_c"], on_test.meta.metrics["probe_c"]) == (1.0, 0.1)
    assert "C=1" in on_val.meta.training.notes and "validation" in on_val.meta.training.notes
    # the validation split is salted apart from the train/test split of the same seed, whole groups
    fit, held = split_indices(groups[:200], 0.25, 0, "validation:")
    assert 0 < len(held) < 200 and {groups[i] for i in fit}.isdisjoint({groups[i] for i in held})
    assert split_indices(groups[:200], 0.25, 0) != (fit, held)
    with pytest.raises(ValueError, match="validation split"):
        validation_aurocs(x[:4], y[:4], groups[:4], 0.01, 0)


def test_probe_c_reaches_the_probe() -> None:
    x, y, groups = _layered(1)
    kw = dict(name="t", kind="truth", model=INFO, train=x[:200], ytr=y[:200], test=x[200:], yte=y[200:],
              datasets=[DatasetRef(name="synthetic", license="CC0")], seed=0, recommended_strength=1.0,
              min_layer_frac=0.0, groups=groups[:200], created_at="2025-01-01T00:00:00Z")
    weak, strong = build_bundle(**kw, probe_c=0.01), build_bundle(**kw, probe_c=10.0)  # type: ignore[arg-type]
    assert weak.probe_weight is not None and strong.probe_weight is not None
    assert float(weak.probe_weight.norm()) < float(strong.probe_weight.norm())  # less L2 shrinkage
