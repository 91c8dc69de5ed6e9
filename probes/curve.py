"""Learning curve of a logistic probe: test AUROC against the number of training groups.

For each size ``n`` (groups, i.e. A/B items or entities) the training examples of the first ``n``
groups of one seeded order (so every size contains the smaller ones) are used, and for each
regularisation strength ``C``:

* the probe layer is chosen on a salted validation split of those groups
  (:func:`probes.train.validation_aurocs`), as ``train --select-frac`` does;
* the probe is refitted on all ``n`` groups and scored on the test set at that layer
  (``test_auroc``, the number a bundle trained this way reports), and at every layer, whose best
  value (``best_test_auroc``) is the optimistic bound a layer picked on the test set would give.

It answers "would more data help?" before anyone collects more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from probes.datasets import DatasetError
from probes.evaluate import paired_accuracy
from probes.methods import auroc
from probes.train import layer_probe_scores, recommend_layers, validation_aurocs


@dataclass(frozen=True)
class CurvePoint:
    groups: int
    examples: int
    c: float
    layer: int  # chosen on the validation split
    validation_auroc: float | None
    test_auroc: float | None  # at ``layer``
    test_paired: float | None  # paired accuracy at ``layer`` (A/B items)
    best_layer: int  # best on the test set (optimistic bound)
    best_test_auroc: float | None


def nested_groups(groups: Sequence[str], sizes: Sequence[int], seed: int) -> list[list[int]]:
    """Example indices of the first ``n`` groups of one seeded group order, for each ``n``."""
    uniq = sorted(set(groups), key=lambda g: hashlib.sha256(f"curve:{seed}:{g}".encode()).hexdigest())
    out = []
    for n in sizes:
        if not 0 < n <= len(uniq):
            raise DatasetError(f"size {n} is outside 1..{len(uniq)} (the training data's groups)")
        chosen = set(uniq[:n])
        out.append([i for i, g in enumerate(groups) if g in chosen])
    return out


def learning_curve(
    x: torch.Tensor, y: torch.Tensor, groups: Sequence[str], xte: torch.Tensor, yte: torch.Tensor,
    gte: Sequence[str], sizes: Sequence[int], cs: Sequence[float], seed: int = 0, select_frac: float = 0.25,
    min_layer_frac: float = 0.15,
) -> list[CurvePoint]:
    points = []
    for n, idx in zip(sizes, nested_groups(groups, sizes, seed), strict=True):
        xi, yi, gi = x[idx], y[idx], [groups[i] for i in idx]
        for c in cs:
            val, _ = validation_aurocs(xi, yi, gi, select_frac, seed, c)
            layer, _ = recommend_layers(val, 3, min_layer_frac)
            scores = layer_probe_scores(xi, yi, xte, seed, c)
            test = [auroc(s, yte.numpy()) for s in scores]
            best, _ = recommend_layers(test, 3, min_layer_frac)
            points.append(CurvePoint(n, len(idx), c, layer, val[layer], test[layer],
                                     paired_accuracy(scores[layer], yte.numpy(), gte), best, test[best]))
    return points


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write(points: Sequence[CurvePoint], out: Path, title: str, notes: str) -> Path:
    """``out/curve.md``, ``out/curve.json`` and ``out/curve.png``; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps([asdict(p) for p in points], indent=1) + "\n")
    lines = [f"# {title}", "", notes, "",
             "| groups | examples | C | layer (validation) | validation AUROC | test AUROC | test paired acc. "
             "| best test layer | best test AUROC |", "|---" * 9 + "|"]
    for p in points:
        lines.append(f"| {p.groups} | {p.examples} | {p.c:g} | {p.layer} | {_f(p.validation_auroc)} | "
                     f"{_f(p.test_auroc)} | {_f(p.test_paired)} | {p.best_layer} | {_f(p.best_test_auroc)} |")
    lines += ["", "![learning curve](curve.png)", ""]
    md = out / "curve.md"
    md.write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in sorted({p.c for p in points}):
        ps = [p for p in points if p.c == c]
        line = ax.plot([p.groups for p in ps], [p.test_auroc or float("nan") for p in ps], marker="o",
                       label=f"C={c:g}, layer by validation")[0]
        ax.plot([p.groups for p in ps], [p.best_test_auroc or float("nan") for p in ps], ls="--",
                color=line.get_color(), alpha=0.6, label=f"C={c:g}, best test layer (bound)")
    ax.set_xscale("log")
    ax.set_xlabel("training groups")
    ax.set_ylabel("test AUROC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=110)
    plt.close(fig)
    return md
