"""Training directions and probes from activations: difference of means with a calibrated probe.

For each layer the direction is ``mean(positive) - mean(negative)`` of the training activations
(its natural scale: ``strength 1`` moves by one class difference). Statistics of the projections on
the unit direction are recorded per layer; held-out AUROC picks the probe layer and the recommended
steering layers; the probe is the mass-mean probe at that layer, Platt-calibrated on training data.
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
    vector: torch.Tensor
    stats: LayerStats


def mean_difference(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[L, H]``: per-layer mean(positive) - mean(negative) of ``acts`` ``[N, L, H]``."""
    pos, neg = labels == 1, labels == 0
    return acts[pos].mean(0) - acts[neg].mean(0)


def fit_layers(
    train: torch.Tensor, ytr: torch.Tensor, test: torch.Tensor, yte: torch.Tensor
) -> list[LayerFit]:
    dirs = mean_difference(train, ytr)
    fits: list[LayerFit] = []
    for k in range(dirs.shape[0]):
        v = dirs[k]
        u = v / v.norm()
        ptr, pte = train[:, k] @ u, test[:, k] @ u
        pos, neg = ptr[ytr == 1], ptr[ytr == 0]
        mid = float(pos.mean() + neg.mean()) / 2
        auroc = float(roc_auc_score(yte.numpy(), pte.numpy())) if len(set(yte.tolist())) == 2 else float("nan")
        acc = float(((pte > mid).long() == yte).float().mean())
        fits.append(
            LayerFit(
                v,
                LayerStats(
                    norm=float(v.norm()),
                    pos_mean=float(pos.mean()),
                    neg_mean=float(neg.mean()),
                    pos_std=float(pos.std()),
                    neg_std=float(neg.std()),
                    auroc=auroc,
                    accuracy=acc,
                ),
            )
        )
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
    fits = fit_layers(train, ytr, test, yte)
    first = max(1, int(min_layer_frac * len(fits)))  # early layers barely separate concepts
    best = max(range(first, len(fits) - 1), key=lambda k: fits[k].stats.auroc or 0.0)
    half = n_recommended // 2
    lo = max(0, min(best - half, len(fits) - n_recommended))
    recommended = list(range(lo, lo + n_recommended))
    st = fits[best].stats
    u = fits[best].vector / fits[best].vector.norm()
    bias = -((st.pos_mean or 0.0) + (st.neg_mean or 0.0)) / 2
    logits = (train[:, best] @ u + bias).numpy()
    calib = platt(logits, ytr.numpy(), seed)
    meta = BundleMetadata(
        name=name,
        kind=kind,
        description=description,
        model=ModelRef(
            name=model.name,
            fingerprint=model.fingerprint,
            hidden_size=model.hidden_size,
            num_layers=model.num_layers,
            architecture=model.architecture,
        ),
        layers=list(range(len(fits))),
        recommended_layers=recommended,
        recommended_strength=recommended_strength,
        layer_stats={str(k): f.stats for k, f in enumerate(fits)},
        probe=ProbeMeta(layer=best, bias=bias, calibration=calib, method="mass-mean"),
        training=Training(method="mean-difference", datasets=list(datasets), position="last", seed=seed),
        metrics={
            "heldout_auroc": float(st.auroc or 0.0),
            "heldout_accuracy": float(st.accuracy or 0.0),
            "probe_layer": float(best),
            "n_train": float(len(ytr)),
            "n_test": float(len(yte)),
        },
        created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return DirectionBundle(
        meta=meta, vectors={k: f.vector.clone() for k, f in enumerate(fits)}, probe_weight=u.clone()
    )
