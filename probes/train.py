"""Training directions and probes from activations: difference of means with a calibrated probe.

For each layer the steering direction is ``mean(positive) - mean(negative)`` of the training
activations (its natural scale: ``strength 1`` moves by one class difference), with statistics of
the projections on the unit direction. A logistic probe per layer is scored on the held-out split;
the best layer carries the bundle's probe (Platt-calibrated) and centres the recommended layers.
The raw mean difference is a poor *classifier* on small models (a few high-variance dimensions
dominate it: held-out AUROC 0.56 vs 0.81 for the logistic probe on SmolLM2 truth), which is why
scoring and steering use different fits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from steering.bundle import (
    BundleMetadata,
    Calibration,
    DatasetRef,
    DirectionBundle,
    LayerStats,
    ModelRef,
    ProbeMeta,
    Training,
)
from steering.model_info import ModelInfo


@dataclass(frozen=True)
class LayerFit:
    vector: torch.Tensor  # mean difference, natural scale
    stats: LayerStats  # projections on the unit mean difference; probe AUROC / accuracy
    probe_w: torch.Tensor
    probe_b: float


def mean_difference(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[L, H]``: per-layer mean(positive) - mean(negative) of ``acts`` ``[N, L, H]``."""
    pos, neg = labels == 1, labels == 0
    return acts[pos].mean(0) - acts[neg].mean(0)


def logistic_probe(
    x: np.ndarray, y: np.ndarray, seed: int, c: float = 0.1
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression on standardised features, returned in raw units:
    ``logit = w . x + bias``."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    w = lr.coef_[0] / sd
    return w, float(lr.intercept_[0] - (w * mu).sum())


def fit_layers(
    train: torch.Tensor, ytr: torch.Tensor, test: torch.Tensor, yte: torch.Tensor, seed: int = 0
) -> list[LayerFit]:
    """Per layer: mean-difference direction (for steering, with projection statistics) and a
    logistic probe (for scoring) evaluated on the held-out split."""
    dirs = mean_difference(train, ytr)
    fits: list[LayerFit] = []
    both = len(set(yte.tolist())) == 2
    for k in range(dirs.shape[0]):
        v = dirs[k]
        u = v / v.norm()
        ptr = train[:, k] @ u
        pos, neg = ptr[ytr == 1], ptr[ytr == 0]
        w, bias = logistic_probe(train[:, k].numpy(), ytr.numpy(), seed)
        logits = test[:, k].numpy() @ w + bias
        auroc = float(roc_auc_score(yte.numpy(), logits)) if both else None  # undefined with one class
        acc = float(((logits > 0).astype(int) == yte.numpy()).mean())
        stats = LayerStats(
            norm=float(v.norm()),
            pos_mean=float(pos.mean()),
            neg_mean=float(neg.mean()),
            pos_std=float(pos.std()),
            neg_std=float(neg.std()),
            auroc=auroc,
            accuracy=acc,
        )
        fits.append(LayerFit(v, stats, torch.from_numpy(w).float(), bias))
    return fits


def platt(scores: np.ndarray, labels: np.ndarray, seed: int) -> Calibration:
    lr = LogisticRegression(C=1e4, random_state=seed)
    lr.fit(scores.reshape(-1, 1), labels)
    return Calibration(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def build_bundle(
    *,
    name: str,
    kind: str,
    model: ModelInfo,
    train: torch.Tensor,
    ytr: torch.Tensor,
    test: torch.Tensor,
    yte: torch.Tensor,
    datasets: Sequence[DatasetRef],
    seed: int,
    recommended_strength: float,
    description: str = "",
    n_recommended: int = 3,
    min_layer_frac: float = 0.15,
) -> DirectionBundle:
    fits = fit_layers(train, ytr, test, yte, seed)
    first = max(1, int(min_layer_frac * len(fits)))  # early layers barely separate concepts
    best = max(range(first, len(fits) - 1), key=lambda k: fits[k].stats.auroc or 0.0)
    half = n_recommended // 2
    lo = max(0, min(best - half, len(fits) - n_recommended))
    recommended = list(range(lo, lo + n_recommended))
    st = fits[best].stats
    w, bias = fits[best].probe_w, fits[best].probe_b
    calib = platt((train[:, best] @ w + bias).numpy(), ytr.numpy(), seed)
    meta = BundleMetadata(
        name=name,
        kind=kind,
        description=description,
        model=ModelRef.of(model),
        layers=list(range(len(fits))),
        recommended_layers=recommended,
        recommended_strength=recommended_strength,
        layer_stats={str(k): f.stats for k, f in enumerate(fits)},
        probe=ProbeMeta(layer=best, bias=bias, calibration=calib, method="logistic"),
        training=Training(method="mean-difference", datasets=list(datasets), position="last", seed=seed),
        metrics={
            **({"heldout_auroc": st.auroc} if st.auroc is not None else {}),
            "heldout_accuracy": float(st.accuracy or 0.0),
            "probe_layer": float(best),
            "n_train": float(len(ytr)),
            "n_test": float(len(yte)),
        },
        created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return DirectionBundle(
        meta=meta, vectors={k: f.vector.clone() for k, f in enumerate(fits)}, probe_weight=w.clone()
    )
