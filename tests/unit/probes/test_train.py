from __future__ import annotations

import torch

from probes import datasets as ds
from probes.methods import mean_difference
from probes.train import build_bundle
from steering.bundle import DatasetRef
from tests.support.tiny import INFO


def _examples(n_groups: int, per_group: int) -> list[ds.Example]:
    return [ds.Example(f"g{g} s{i}", (g + i) % 2, f"g{g}") for g in range(n_groups) for i in range(per_group)]


def test_group_split_keeps_groups_on_one_side() -> None:
    ex = _examples(200, 3)
    tr, te = ds.group_split(ex, 0.25, seed=0)
    assert {e.group for e in tr}.isdisjoint({e.group for e in te})
    assert len(tr) + len(te) == len(ex)
    assert 0.15 < len(te) / len(ex) < 0.35


def test_subsample_takes_whole_groups_and_is_not_biased_towards_the_test_side() -> None:
    data = ds.Dataset("d", _examples(400, 3), "", "")
    sub = ds.subsample(data, 300, seed=0)
    assert len(sub.examples) == 300
    groups = {e.group for e in sub.examples}
    assert all(sum(e.group == g for e in sub.examples) == 3 for g in groups)
    _, te = ds.group_split(sub.examples, 0.2, seed=0)
    assert 0.1 < len(te) / len(sub.examples) < 0.3
    assert ds.subsample(data, 300, seed=0) == sub  # deterministic


def test_build_bundle_recovers_a_planted_direction() -> None:
    g = torch.Generator().manual_seed(0)
    n, L, H = 400, INFO.num_layers, INFO.hidden_size
    y = torch.arange(n) % 2
    planted = torch.zeros(L, H)
    planted[2, 3] = 4.0  # layer 2 separates the classes along dimension 3
    x = torch.randn(n, L, H, generator=g) + y[:, None, None] * planted
    b = build_bundle(
        name="t", kind="truth", model=INFO, train=x[:300], ytr=y[:300], test=x[300:], yte=y[300:],
        datasets=[DatasetRef(name="synthetic")], seed=0, recommended_strength=1.0, min_layer_frac=0.0,
    )
    assert b.meta.probe is not None and b.meta.probe.layer == 2
    assert b.meta.metrics["heldout_auroc"] > 0.95
    assert 2 in b.meta.recommended_layers
    assert torch.equal(b.vectors[2], mean_difference(x[:300], y[:300])[2])
    st = b.stats(2)
    assert st.pos_mean is not None and st.neg_mean is not None and st.pos_mean - st.neg_mean > 3.0
