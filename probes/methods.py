"""Direction-finding methods on one layer's activations ``x`` ``[N, H]`` with labels ``y`` ``[N]``.

Each method returns a *scoring direction* ``d`` (``score = x . d``, larger for the positive class):

* ``mean-diff`` -- difference of class means (mass-mean; Marks & Tegmark 2023).
* ``logistic`` -- L2-regularised logistic regression on standardised features, in raw units.
* ``pca`` -- first principal component of paired differences (RepE, Zou et al. 2023): positives
  are paired with negatives of the same group where possible (the rest at random, seeded), each
  difference gets a random sign, and the component is oriented towards the positive class.

:func:`steering_vector` rescales any direction to its natural steering scale: the unit direction
times the class-mean difference along it, so ``strength 1`` moves by one class difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

Method = Literal["mean-diff", "logistic", "pca"]
METHODS: tuple[Method, ...] = ("mean-diff", "logistic", "pca")


def mean_difference(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean(positive) - mean(negative) over the first axis (works per layer on ``[N, L, H]``)."""
    pos, neg = labels == 1, labels == 0
    return acts[pos].mean(0) - acts[neg].mean(0)


PROBE_C = 0.1  # default inverse L2 strength of the logistic probe


def logistic_probe(x: np.ndarray, y: np.ndarray, seed: int, c: float = PROBE_C) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression on standardised features, returned in raw units:
    ``logit = w . x + bias``."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    w = lr.coef_[0] / sd
    return w, float(lr.intercept_[0] - (w * mu).sum())


def pairs(labels: Sequence[int], groups: Sequence[str], seed: int) -> list[tuple[int, int]]:
    """(positive index, negative index) pairs: within each group first, then the leftovers in a
    seeded random order. Every index is used at most once."""
    by_group: dict[str, tuple[list[int], list[int]]] = {}
    for i, (lab, g) in enumerate(zip(labels, groups, strict=True)):
        by_group.setdefault(g, ([], []))[0 if lab == 1 else 1].append(i)
    out: list[tuple[int, int]] = []
    rest_pos: list[int] = []
    rest_neg: list[int] = []
    for pos, neg in by_group.values():
        k = min(len(pos), len(neg))
        out.extend(zip(pos[:k], neg[:k], strict=True))
        rest_pos.extend(pos[k:])
        rest_neg.extend(neg[k:])
    rng = np.random.default_rng(seed)
    rp, rn = rng.permutation(rest_pos), rng.permutation(rest_neg)
    out.extend((int(a), int(b)) for a, b in zip(rp, rn, strict=False))
    return out


def pca_direction(x: torch.Tensor, y: torch.Tensor, groups: Sequence[str], seed: int) -> torch.Tensor:
    idx = pairs(y.tolist(), groups, seed)
    if not idx:
        raise ValueError("pca needs at least one positive and one negative example")
    p = torch.tensor([a for a, _ in idx])
    n = torch.tensor([b for _, b in idx])
    diffs = (x[p] - x[n]).double()
    signs = torch.from_numpy(np.random.default_rng(seed).choice([-1.0, 1.0], size=len(idx)))
    d = diffs * signs[:, None]
    d = d - d.mean(0)
    vh: torch.Tensor = torch.linalg.svd(d, full_matrices=False).Vh
    u = vh[0]
    if float(diffs.mean(0) @ u) < 0:
        u = -u
    return u.float()


def direction(
    method: Method, x: torch.Tensor, y: torch.Tensor, groups: Sequence[str], seed: int
) -> tuple[torch.Tensor, float]:
    """Scoring direction and bias for one layer: ``score = x . d + bias`` (> 0: positive class).
    For mean-diff and pca the bias puts the threshold midway between the class means."""
    if method == "logistic":
        w, b = logistic_probe(x.numpy(), y.numpy(), seed)
        return torch.from_numpy(w).float(), b
    d = mean_difference(x, y) if method == "mean-diff" else pca_direction(x, y, groups, seed)
    proj = x @ d
    mid = 0.5 * (float(proj[y == 1].mean()) + float(proj[y == 0].mean()))
    return d, -mid


def steering_vector(d: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``d`` rescaled to the class-mean difference along it (mean-diff is returned unchanged)."""
    u: torch.Tensor = d / d.norm()
    return u * float(mean_difference(x, y) @ u)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve; ``None`` when only one class is present (undefined)."""
    if len(set(labels.tolist())) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(((logits > 0).astype(int) == labels).mean())
