"""ITI-style head selection and head vectors (Li et al. 2023, "Inference-Time Intervention").

Input: per-head attention outputs before the output projection (``o_proj``'s input) at the reading
position, ``x [N, layers, heads, head_dim]``, binary labels and a train / validation split.

1. A logistic probe per head, fitted on the training split; heads ranked by its *validation*
   accuracy (the test split is never looked at here).
2. The top-K heads are kept (:func:`choose_k` picks K on validation when asked).
3. Each kept head's direction is the mass-mean shift ``mean(true) - mean(false)`` on the training
   split, as a unit vector ``u``; ``sigma`` is the std of the training activations projected on
   ``u``. The stored head vector is ``sigma * u``, so a steering op's ``strength`` is ITI's
   ``alpha``: it shifts each head by ``alpha * sigma * u``.

Deterministic for a fixed seed (liblinear is seeded; everything else is closed-form).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from steering.bundle import BundleMetadata, DatasetRef, DirectionBundle, ModelRef, Training
from steering.heads import HeadMeta, head_key
from steering.model_info import ModelInfo

KS = (1, 2, 4, 8, 16, 32, 48, 64)


@dataclass(frozen=True)
class HeadFit:
    accuracy: np.ndarray  # [layers, heads] validation accuracy of each head's probe
    selected: list[tuple[int, int]]  # top-K (layer, head), best first
    vectors: dict[tuple[int, int], np.ndarray]  # sigma * unit mass-mean direction, [head_dim]
    sigma: dict[tuple[int, int], float]
    k_scores: dict[int, float]  # K -> validation accuracy of the top-K ensemble (when K was chosen)


def head_accuracies(x: np.ndarray, y: np.ndarray, train: Sequence[int], val: Sequence[int], seed: int,
                    c: float = 1.0) -> np.ndarray:
    """``[layers, heads]`` validation accuracy of a logistic probe per head, fitted on ``train``."""
    _, nl, nh, _ = x.shape
    acc = np.zeros((nl, nh))
    tr, va = np.asarray(train), np.asarray(val)
    for layer in range(nl):
        for h in range(nh):
            clf = LogisticRegression(C=c, max_iter=1000, random_state=seed)
            clf.fit(x[tr, layer, h], y[tr])
            acc[layer, h] = float(clf.score(x[va, layer, h], y[va]))
    return acc


def mass_mean(xh: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit mass-mean direction of one head's activations ``[N, head_dim]`` and the std of the
    projections on it."""
    d = xh[y == 1].mean(0) - xh[y == 0].mean(0)
    norm = float(np.linalg.norm(d))
    u = d / norm if norm > 0 else d
    return u, float((xh @ u).std())


def top_heads(acc: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads of highest accuracy, best first (ties: lower layer, then lower head)."""
    flat = sorted((-acc[layer, h], layer, h) for layer in range(acc.shape[0]) for h in range(acc.shape[1]))
    return [(layer, h) for _, layer, h in flat[:k]]


def ensemble_accuracy(x: np.ndarray, y: np.ndarray, train: Sequence[int], val: Sequence[int],
                      heads: Sequence[tuple[int, int]]) -> float:
    """Validation accuracy of the summed, sigma-normalised projections on the heads' mass-mean
    directions (what steering all of them together moves), thresholded midway between the
    training class means."""
    tr, va = np.asarray(train), np.asarray(val)

    def score(rows: np.ndarray) -> np.ndarray:
        total = np.zeros(len(rows))
        for layer, h in heads:
            u, sigma = mass_mean(x[tr, layer, h], y[tr])
            total += (x[rows, layer, h] @ u) / (sigma or 1.0)
        return total

    s_tr = score(tr)
    cut = (s_tr[y[tr] == 1].mean() + s_tr[y[tr] == 0].mean()) / 2
    return float(((score(va) > cut).astype(int) == y[va]).mean())


def choose_k(x: np.ndarray, y: np.ndarray, train: Sequence[int], val: Sequence[int], acc: np.ndarray,
             ks: Sequence[int] = KS) -> tuple[int, dict[int, float]]:
    """The K of ``ks`` whose top-K ensemble is most accurate on validation (ties: the smaller K)."""
    limit = acc.size
    scores = {k: ensemble_accuracy(x, y, train, val, top_heads(acc, k)) for k in ks if k <= limit}
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def fit_heads(x: np.ndarray, y: np.ndarray, train: Sequence[int], val: Sequence[int], k: int | None, seed: int,
              c: float = 1.0) -> HeadFit:
    """Rank heads on validation, keep the top ``k`` (``None``: :func:`choose_k`), and compute their
    ITI vectors from the training split."""
    acc = head_accuracies(x, y, train, val, seed, c)
    k_scores: dict[int, float] = {}
    if k is None:
        k, k_scores = choose_k(x, y, train, val, acc)
    selected = top_heads(acc, k)
    tr = np.asarray(train)
    vectors, sigma = {}, {}
    for layer, h in selected:
        u, s = mass_mean(x[tr, layer, h], y[tr])
        vectors[layer, h], sigma[layer, h] = (s * u).astype(np.float32), s
    return HeadFit(acc, selected, vectors, sigma, k_scores)


def to_bundle(fit: HeadFit, *, name: str, info: ModelInfo, strength: float, datasets: Sequence[DatasetRef],
              seed: int, metrics: dict[str, float], notes: str = "", created_at: str = "") -> DirectionBundle:
    """A head-only bundle (no residual directions): ``heads.{layer}`` tensors with the selected
    heads' ``sigma * u`` (zeros elsewhere) and every head's validation accuracy in the metadata."""
    nl, nh = fit.accuracy.shape
    head_dim = len(next(iter(fit.vectors.values())))
    layers = sorted({layer for layer, _ in fit.selected})
    tensors = {layer: torch.zeros(nh, head_dim) for layer in layers}
    for (layer, h), v in fit.vectors.items():
        tensors[layer][h] = torch.from_numpy(v)
    heads = HeadMeta(
        num_heads=nh, head_dim=head_dim, layers=layers, selected=list(fit.selected), recommended_strength=strength,
        accuracy={head_key(layer, h): float(fit.accuracy[layer, h]) for layer in range(nl) for h in range(nh)},
        sigma={head_key(*lh): s for lh, s in fit.sigma.items()}, notes=notes,
    )
    meta = BundleMetadata(
        name=name, kind="truth",
        description=f"ITI-style head vectors: top {len(fit.selected)} of {nl * nh} heads by validation accuracy",
        model=ModelRef.of(info), layers=[], recommended_layers=[], recommended_strength=strength,
        training=Training(method="iti-mass-mean", datasets=list(datasets), position="last", seed=seed, notes=notes),
        metrics=metrics, created_at=created_at or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        heads=heads,
    )
    return DirectionBundle(meta=meta, vectors={}, head_vectors=tensors)
