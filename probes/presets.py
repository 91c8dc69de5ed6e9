"""Training recipes of the shipped bundles (``truthsteer probes train --preset NAME``)."""

from __future__ import annotations

from dataclasses import dataclass

from probes.methods import PROBE_C


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    train: tuple[str, ...]
    test: tuple[str, ...]  # empty: a held-out group split of ``train``
    description: str
    recommended_strength: float
    max_per_dataset: int | None = None  # seeded subsample of each training file
    probe_c: float = PROBE_C  # the logistic probe's inverse L2 strength
    select_frac: float | None = None  # choose the probe layer on this validation split, not on ``test``
    # training parts whose held-out group split stays out of training although ``test`` is set, so
    # that ``heldout:PRESET:PART`` measures them on items the bundle never saw
    split: tuple[str, ...] = ()


PRESETS = {
    "truth": Preset(
        name="truth",
        kind="truth",
        train=("cities", "word_types"),
        test=(),
        description="Truth direction: true minus false statements (cities and word types, "
        "affirmative and negated together), last token.",
        recommended_strength=1.0,
        max_per_dataset=1500,
    ),
    "sycophancy": Preset(
        name="sycophancy",
        kind="sycophancy",
        train=("caa_sycophancy",),
        test=("caa_sycophancy_test",),
        description="Sycophancy direction (CAA): answer matching minus not matching the user's "
        "stated view, at the answer letter.",
        recommended_strength=1.0,
        # all 1,000 CAA items: held-out AUROC rose from 0.59 (75 items) to 0.82 (1,000) with no
        # plateau in sight, and C = 1 beat 0.1 / 0.01 from 300 items on (docs/probes.md)
        max_per_dataset=None,
        probe_c=1.0,
        select_frac=0.25,
    ),
}
