"""Leave-one-domain-out search on planted multi-domain data, recipes and the report writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from probes import lodo, lodo_report
from probes.lodo import DomainData
from probes.recipes import RECIPES, get_recipe, leace_eraser

H, L = 24, 3
TYPES = ("empirical", "logical", "fictional", "ethical", "definitional", "empirical")


def planted(seed: int = 0, n: int = 240, specific: float = 0.6, noise: float = 0.7
            ) -> tuple[list[DomainData], np.ndarray, np.ndarray]:
    """Six domains: on layer 1, ``label * (g + specific * s_k)`` plus a domain offset and noise;
    layers 0 and 2 carry only noise. ``g`` (shared) and the ``s_k`` are orthonormal."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(H, H)))[0].T
    g, specifics = basis[0], basis[1:7]
    doms = []
    for k, s in enumerate(specifics):
        y = np.tile([0, 1], n // 2)
        x = rng.normal(scale=noise, size=(n, L, H)).astype(np.float32)
        x[:, 1] += (y[:, None] - 0.5) * (g + specific * s) * 2 + 3.0 * basis[7 + k]
        groups = [f"d{k}:{i // 2}" for i in range(n)]
        doms.append(DomainData(f"dom{k}", TYPES[k], x, y, groups, np.arange(n) % 4 == 0))
    return doms, g, specifics


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_splits_are_by_group_and_cover_each_domain_once() -> None:
    doms, _, _ = planted()
    for d in doms:
        sides = [set(d.side(s, 0).tolist()) for s in ("train", "val", "test")]
        assert set().union(*sides) == set(range(len(d.y)))
        assert sum(len(s) for s in sides) == len(d.y)
        groups = [{d.groups[i] for i in s} for s in sides]
        assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
        assert set(d.side("trainval", 0).tolist()) == sides[0] | sides[1]


def test_lodo_never_fits_on_the_held_out_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    doms, _, _ = planted()
    seen: list[int] = []

    def spy(x: np.ndarray, y: np.ndarray, d: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
        seen.append(len(x))
        return RECIPES["mean-diff"](x, y, d, seed)

    monkeypatch.setitem(RECIPES, "spy", spy)
    scores = lodo.lodo(doms, "spy", (1,), "val", 0)
    for k, held in enumerate(doms):
        others = sum(len(d.side("train", 0)) for j, d in enumerate(doms) if j != k)
        assert seen[k] == others  # exactly the other domains' training splits
        assert len(scores.scores[k]) == len(held.side("val", 0))


def test_search_recovers_the_shared_direction_and_picks_its_layer() -> None:
    doms, g, specifics = planted(n=600, noise=0.5)
    cands = lodo.search(doms, ["mean-diff", "domain-mean-diff", "lda-1", "leace-lda-1", "logistic-0.1"], [0, 1, 2], 0)
    assert [c.val.mean() for c in cands] == sorted((c.val.mean() for c in cands), reverse=True)
    best = cands[0]
    assert best.layers in ((1,), (0, 1, 2))
    assert best.test.mean() > 0.9 and best.test.minimum() > 0.85
    x, y, d = lodo.stack(doms, "trainval", (1,), 0)
    w, _ = get_recipe("domain-mean-diff")(x, y, d, 0)
    assert cos(w, g) > 0.95  # the joint recipe finds the domain-general direction
    for k, s in enumerate(specifics):  # and each domain's own direction is its fit minus the joint one
        xk, yk, dk = lodo.stack([doms[k]], "trainval", (1,), 0)
        wk, _ = get_recipe("mean-diff")(xk, yk, dk, 0)
        # identifiable from data: what the domain adds to the average over domains
        assert cos(wk - w, s - specifics.mean(0)) > 0.95


def test_joint_training_beats_single_domain_transfer() -> None:
    doms, _, _ = planted(specific=1.2)
    best = lodo.search(doms, ["domain-mean-diff"], [1], 0, band=0)[0]
    m, weights = lodo.transfer_matrix(doms, "domain-mean-diff", (1,), 0)
    off = m[~np.eye(len(doms), dtype=bool)]
    assert best.test.mean() > off.mean() + 0.02
    assert np.all(np.diag(m) > 0.95)
    c = lodo.mahalanobis_cosines(weights, np.concatenate([d.x[:, 1] for d in doms]))
    assert np.allclose(np.diag(c), 1.0) and np.allclose(c, c.T)
    assert lodo.r_squared(c[~np.eye(len(doms), dtype=bool)], off) >= 0.0


def test_leace_eraser_removes_linear_domain_information() -> None:
    rng = np.random.default_rng(1)
    z = np.eye(3)[rng.integers(0, 3, 600)]
    x = rng.normal(size=(600, 10)) + z @ rng.normal(scale=3, size=(3, 10))
    erased = leace_eraser(x, z)(x)
    cross = (erased - erased.mean(0)).T @ (z - z.mean(0)) / len(x)
    assert np.abs(cross).max() < 1e-4
    assert np.abs(leace_eraser(x, z)(x) - x).max() > 0.1  # it did change something


def test_recipes_score_positive_class_higher_and_are_deterministic() -> None:
    doms, _, _ = planted()
    x, y, d = lodo.stack(doms, "train", (1,), 0)
    for name, fit in RECIPES.items():
        w, b = fit(x, y, d, 3)
        s = x @ w + b
        assert s[y == 1].mean() > s[y == 0].mean(), name
        w2, b2 = fit(x, y, d, 3)
        assert np.array_equal(w, w2) and b == b2, name
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")


def test_scores_pool_by_type_and_negation() -> None:
    s = lodo.Scores({"a": 1.0, "b": 0.5}, [np.array([0.1, 0.9]), np.array([0.2, 0.8, 0.3, 0.7])],
                    [np.array([0, 1]), np.array([0, 1, 1, 0])], ["x", "y"],
                    [np.array([True, True]), np.array([False, False, True, True])])
    assert s.mean() == 0.75 and s.minimum() == 0.5
    assert s.by_type() == {"x": 1.0, "y": 0.75}  # computed from the scores, not the per-domain dict
    # negated rows: (0.1, 0), (0.9, 1), (0.3, 1), (0.7, 0): 3 of 4 pairs ordered
    assert s.negated_auroc() == 0.75
    assert s.pooled() == pytest.approx(8 / 9)


def test_report_writes_tables_and_plots(tmp_path: Path) -> None:
    doms, _, _ = planted(n=80)
    cands = lodo.search(doms, ["mean-diff", "lda-1"], [1], 0, band=0)
    m, weights = lodo.transfer_matrix(doms, cands[0].recipe, cands[0].layers, 0)
    c = lodo.mahalanobis_cosines(weights, np.concatenate([d.x[:, 1] for d in doms]))
    path = lodo_report.write(tmp_path, "t", "notes", {"raw": cands}, ("raw", cands[0]), m, c,
                             [d.name for d in doms], {d.name: len(d.y) for d in doms})
    text = path.read_text()
    assert "| dom5 | 80 |" in text and "R²" in text
    assert (tmp_path / "transfer.png").stat().st_size > 1000 and (tmp_path / "mahalanobis.png").is_file()
