"""Training recipes of the shipped bundles (``truthsteer probes train --preset NAME``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    train: tuple[str, ...]
    test: tuple[str, ...]  # empty: a held-out group split of ``train``
    description: str
    recommended_strength: float
    max_per_dataset: int | None = None  # seeded subsample of each training file


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
        max_per_dataset=300,
    ),
}
