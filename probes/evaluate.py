"""Scoring a bundle's probe and directions on a labelled dataset's activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probes.methods import accuracy, auroc
from steering.bundle import DirectionBundle


def probe_probabilities(bundle: DirectionBundle, acts: torch.Tensor) -> np.ndarray:
    """Calibrated probe scores ``sigmoid(a * (w . h + bias) + b)`` for ``acts`` ``[N, L, H]``, as
    the server computes them."""
    if bundle.meta.probe is None or bundle.probe_weight is None:
        raise ValueError(f"bundle {bundle.name} has no probe")
    p = bundle.meta.probe
    logits = (acts[:, p.layer].double() @ bundle.probe_weight.double()).numpy() + p.bias
    z = p.calibration.a * logits + p.calibration.b
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by bin size
    (confidence = mean predicted probability of the positive class in the bin)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += float(m.sum()) * abs(float(labels[m].mean()) - float(probs[m].mean()))
    return total / len(probs)


def paired_accuracy(scores: np.ndarray, labels: np.ndarray, groups: Sequence[str]) -> float | None:
    """Fraction of (positive, negative) pairs *within a group* that the scores order correctly
    (ties count half): for A/B items, how often the matching answer outscores the other one."""
    by: dict[str, tuple[list[float], list[float]]] = {}
    for s, y, g in zip(scores.tolist(), labels.tolist(), groups, strict=True):
        by.setdefault(g, ([], []))[0 if y == 1 else 1].append(s)
    wins = n = 0.0
    for pos, neg in by.values():
        for a in pos:
            for b in neg:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
                n += 1
    return wins / n if n else None


@dataclass(frozen=True)
class Evaluation:
    dataset: str
    n: int
    n_pos: int
    auroc: float | None
    accuracy: float | None  # these three need both classes
    mean_score: float
    confidence: float  # mean |score - 0.5|: how far from "undecided" the probe is
    ece: float | None
    paired_accuracy: float | None
    direction_auroc: dict[int, float | None]  # per layer: projection on the steering direction

    def row(self) -> dict[str, object]:
        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        best = max((v for v in self.direction_auroc.values() if v is not None), default=None)
        return {
            "dataset": self.dataset,
            "n (pos)": f"{self.n} ({self.n_pos})",
            "probe AUROC": f(self.auroc),
            "accuracy@0.5": f(self.accuracy),
            "mean score": f(self.mean_score),
            "mean abs(score-0.5)": f(self.confidence),
            "ECE": f(self.ece),
            "paired acc": f(self.paired_accuracy),
            "best direction AUROC": f(best),
        }


def evaluate(
    bundle: DirectionBundle, acts: torch.Tensor, labels: Sequence[int], groups: Sequence[str], name: str
) -> Evaluation:
    y = np.asarray(labels)
    probs = probe_probabilities(bundle, acts)
    both = len(set(y.tolist())) == 2  # a one-class set ("neither") is only read by its mean score
    dir_auc = {k: auroc((acts[:, k] @ bundle.unit(k)).numpy(), y) for k in sorted(bundle.vectors)}
    return Evaluation(
        dataset=name,
        n=len(y),
        n_pos=int(y.sum()),
        auroc=auroc(probs, y),
        accuracy=accuracy(probs - 0.5, y) if both else None,
        mean_score=float(probs.mean()),
        confidence=float(np.abs(probs - 0.5).mean()),
        ece=expected_calibration_error(probs, y) if both else None,
        paired_accuracy=paired_accuracy(probs, y, groups),
        direction_auroc=dir_auc,
    )


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
