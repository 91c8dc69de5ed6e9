from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from probes.curve import learning_curve, nested_groups, write
from tests.support.tiny import INFO


def _data(n: int, seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A/B-like pairs (one positive, one negative per group), signal planted at layer 2 only."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    plant = torch.zeros(INFO.num_layers, INFO.hidden_size)
    plant[2, 3] = scale
    x = torch.randn(n, INFO.num_layers, INFO.hidden_size, generator=g) + y[:, None, None] * plant
    return x, y, [f"s{seed}:{i // 2}" for i in range(n)]


def test_nested_groups_are_whole_groups_and_each_size_contains_the_smaller() -> None:
    groups = [f"g{i // 2}" for i in range(40)]
    a, b, c = nested_groups(groups, [3, 7, 20], seed=0)
    assert (len(a), len(b), len(c)) == (6, 14, 40)
    assert set(a) < set(b) < set(c)
    assert nested_groups(groups, [3], seed=0) == [a] and nested_groups(groups, [3], seed=1) != [a]
    with pytest.raises(ValueError, match=r"outside 1\.\.20"):
        nested_groups(groups, [21], seed=0)


def test_learning_curve_finds_the_planted_layer_and_rises_with_data(tmp_path: Path) -> None:
    x, y, groups = _data(400, 0, 1.0)
    xte, yte, gte = _data(200, 1, 1.0)
    pts = learning_curve(x, y, groups, xte, yte, gte, sizes=[10, 200], cs=[0.1, 1.0], seed=0, min_layer_frac=0.0)
    assert [(p.groups, p.examples, p.c) for p in pts] == [(10, 20, 0.1), (10, 20, 1.0), (200, 400, 0.1),
                                                          (200, 400, 1.0)]
    big = [p for p in pts if p.groups == 200]
    assert all(p.layer == 2 and p.best_layer == 2 and p.test_auroc == p.best_test_auroc for p in big)
    small = [p for p in pts if p.groups == 10]
    assert min(p.test_auroc or 0 for p in big) > max(p.best_test_auroc or 0 for p in small) - 0.05
    assert all(p.test_auroc is not None and p.test_auroc > 0.7 for p in big)
    md = write(pts, tmp_path / "c", "t", "notes")
    assert md.read_text().count("\n| ") == 1 + len(pts)  # header + one row per point
    assert json.loads((tmp_path / "c" / "curve.json").read_text())[2]["layer"] == 2
    assert (tmp_path / "c" / "curve.png").stat().st_size > 0
