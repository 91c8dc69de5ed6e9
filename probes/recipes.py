"""Probe recipes for the leave-one-domain-out search: each fits a linear scorer on one layer.

A recipe maps training activations ``x`` ``[N, H]``, labels ``y`` ``[N]`` (1 = true) and domain
ids ``d`` ``[N]`` to ``(w, b)`` with ``score = x . w + b`` (larger = more likely true). All are
pure numpy, deterministic for a seed, and linear in ``x`` at scoring time, so every winner can be
served by the engine's one-``addmm`` probe op.

* ``mean-diff`` -- difference of class means (mass-mean probe, Marks & Tegmark).
* ``domain-mean-diff`` -- the average over domains of each domain's own class-mean difference:
  every domain counts once, whatever its size or class balance.
* ``logistic-C`` -- L2 logistic regression on standardised features (C = inverse strength).
* ``lda-a`` -- Fisher / Mahalanobis probe: ``(S_w + a * tr(S_w)/H * I)^-1 (mu_1 - mu_0)`` with the
  pooled within-class covariance ``S_w`` and shrinkage ``a``.
* ``leace-lda-a`` -- the same after LEACE-style erasure of the *domain*: the affine map that removes
  every linear trace of domain identity with least (whitened) change (Belrose et al. 2023), fitted
  on the training data; the probe is composed back onto raw activations, so it reads only what no
  linear function of the domain explains: the domain-general part of truth.

Thresholds ``b`` sit midway between the projected class means (logistic keeps its intercept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

Fit = Callable[[np.ndarray, np.ndarray, np.ndarray, int], tuple[np.ndarray, float]]


def _midpoint(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    p = x @ w
    return -0.5 * float(p[y == 1].mean() + p[y == 0].mean())


def mean_diff(x: np.ndarray, y: np.ndarray, d: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    w = x[y == 1].mean(0) - x[y == 0].mean(0)
    return w, _midpoint(x, y, w)


def domain_mean_diff(x: np.ndarray, y: np.ndarray, d: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    diffs = [x[(d == k) & (y == 1)].mean(0) - x[(d == k) & (y == 0)].mean(0)
             for k in np.unique(d) if {0, 1} <= set(y[d == k].tolist())]
    if not diffs:
        raise ValueError("no domain has both classes")
    w = np.mean(diffs, axis=0)
    return w, _midpoint(x, y, w)


def logistic(c: float) -> Fit:
    def fit(x: np.ndarray, y: np.ndarray, d: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
        mu, sd = x.mean(0), x.std(0) + 1e-6
        lr = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit((x - mu) / sd, y)
        w = lr.coef_[0] / sd
        return w, float(lr.intercept_[0] - (w * mu).sum())
    return fit


def _within_cov(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x.astype(np.float64).copy()
    for c in (0, 1):
        xc[y == c] -= xc[y == c].mean(0)
    return np.asarray(xc.T @ xc / max(1, len(x) - 2))


def lda(shrink: float) -> Fit:
    def fit(x: np.ndarray, y: np.ndarray, d: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
        s = _within_cov(x, y)
        s[np.diag_indices_from(s)] += shrink * np.trace(s) / len(s)
        w = np.linalg.solve(s, x[y == 1].mean(0) - x[y == 0].mean(0)).astype(np.float32)
        return w, _midpoint(x, y, w)
    return fit


@dataclass(frozen=True)
class Eraser:
    """``x -> x - P (x - mean)``: LEACE's least-change affine eraser for the concept ``z``."""

    mean: np.ndarray  # [H]
    proj: np.ndarray  # [H, H]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x - (x - self.mean) @ self.proj.T
        return out


def leace_eraser(x: np.ndarray, z: np.ndarray, ridge: float = 1e-3) -> Eraser:
    """Fit the eraser of the one-hot concept ``z`` ``[N, K]``: with ``W = Sigma^(-1/2)`` (ridged),
    ``P = W^+ Q W`` where ``Q`` projects onto the column space of ``W Sigma_xz``. Afterwards the
    cross-covariance of the erased ``x`` with ``z`` is zero."""
    x64 = x.astype(np.float64)
    mu = x64.mean(0)
    xc = x64 - mu
    zc = z.astype(np.float64) - z.mean(0)
    sigma = xc.T @ xc / len(x)
    evals, evecs = np.linalg.eigh(sigma)
    evals = np.maximum(evals, 0) + ridge * max(float(evals.max()), 1e-12)
    w = (evecs / np.sqrt(evals)) @ evecs.T
    w_inv = (evecs * np.sqrt(evals)) @ evecs.T
    u, s, _ = np.linalg.svd(w @ (xc.T @ zc / len(x)), full_matrices=False)
    u = u[:, s > s.max() * 1e-6] if s.size and s.max() > 0 else u[:, :0]
    proj = w_inv @ (u @ u.T) @ w
    return Eraser(mu.astype(np.float32), proj.astype(np.float32))


def leace_lda(shrink: float) -> Fit:
    inner = lda(shrink)

    def fit(x: np.ndarray, y: np.ndarray, d: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
        ks = np.unique(d)
        if len(ks) < 2:
            return inner(x, y, d, seed)
        eraser = leace_eraser(x, (d[:, None] == ks[None, :]).astype(np.float64))
        w, _ = inner(eraser(x), y, d, seed)
        w_raw = (np.eye(len(w), dtype=np.float32) - eraser.proj).T @ w  # score(erase(x)) = x . w_raw + c
        return w_raw, _midpoint(x, y, w_raw)
    return fit


RECIPES: dict[str, Fit] = {
    "mean-diff": mean_diff,
    "domain-mean-diff": domain_mean_diff,
    "logistic-0.01": logistic(0.01),
    "logistic-0.1": logistic(0.1),
    "logistic-1": logistic(1.0),
    "lda-0.1": lda(0.1),
    "lda-1": lda(1.0),
    "leace-lda-0.1": leace_lda(0.1),
    "leace-lda-1": leace_lda(1.0),
}


def get_recipe(name: str) -> Fit:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r} (have {', '.join(RECIPES)})") from None
