"""eval/data.py: the truth probes' held-out sets are exactly what the shipped bundles never saw."""

from __future__ import annotations

import numpy as np

from eval import data
from probes import sources
from probes.lodo import DomainData, in_lodo_test


def test_truth_heldout_holds_only_lodo_test_groups_and_every_type() -> None:
    sets = data.truth_heldout(None, None)
    domains = sources.truth_domains()
    types = {d.truth_type for n, d in domains.items() if n != "truthfulqa"}
    assert {f"{t} (test split)" for t in types} | {"negated (test split)", "truthfulqa (never trained on)"} == set(sets)
    group_domain = {(e.text, e.group): n for n, d in domains.items() for e in d.examples}
    for name, dset in sets.items():
        labels = dset.labels()
        assert labels.count(0) == labels.count(1) > 0, name  # balanced: AUROC has both classes
        if name.startswith("truthfulqa"):
            assert {group_domain[(e.text, e.group)] for e in dset.examples} == {"truthfulqa"}
            continue
        assert all(in_lodo_test(e.group) for e in dset.examples), name
        assert "truthfulqa" not in {group_domain[(e.text, e.group)] for e in dset.examples}, name
    assert all(e.negated for e in sets["negated (test split)"].examples)


def test_in_lodo_test_is_the_search_and_bundles_test_side() -> None:
    groups = [f"g{i % 37}" for i in range(200)]
    d = DomainData("d", "empirical", np.zeros((200, 1, 2)), np.arange(200) % 2, groups, np.zeros(200, bool))
    test = set(d.side("test", 0).tolist())
    assert test == {i for i, g in enumerate(groups) if in_lodo_test(g)}
    assert test.isdisjoint(d.side("trainval", 0).tolist()) and 0 < len(test) < 200
