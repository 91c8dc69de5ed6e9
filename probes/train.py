"""Training a direction bundle from activations: a steering direction per layer and a calibrated probe.

For each layer the steering direction comes from the chosen method (:mod:`probes.methods`, default
difference of means) at its natural scale, with statistics of the training projections on it. A
logistic probe per layer is scored on the held-out split; the best layer carries the bundle's
probe (Platt-calibrated) and centres the recommended layers. The raw mean difference is a poor
*classifier* on small models (a few high-variance dimensions dominate it: held-out AUROC 0.56 vs
0.81 for the logistic probe on SmolLM2 truth), which is why scoring and steering use different fits;
the direction's own held-out AUROC is recorded too (``direction_auroc`` per layer in ``metrics``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from probes.datasets import DatasetError, split_indices
from probes.methods import (
    PROBE_C,
    Method,
    accuracy,
    auroc,
    direction,
    logistic_probe,
    mean_difference,
    steering_vector,
)
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
    vector: torch.Tensor  # steering direction, natural scale
    stats: LayerStats  # projections on the unit direction; probe AUROC / accuracy
    probe_w: torch.Tensor
    probe_b: float
    direction_auroc: float | None  # the steering direction itself as a classifier, held out


def fit_layers(
    train: torch.Tensor,
    ytr: torch.Tensor,
    test: torch.Tensor,
    yte: torch.Tensor,
    seed: int = 0,
    method: Method = "mean-diff",
    groups: Sequence[str] | None = None,
    probe_c: float = PROBE_C,
) -> list[LayerFit]:
    """Per layer: the method's steering direction (with projection statistics) and a logistic
    probe (for scoring, L2 strength ``1 / probe_c``), both evaluated on the held-out split."""
    groups = list(groups) if groups is not None else [str(i) for i in range(len(ytr))]
    fits: list[LayerFit] = []
    y_np = yte.numpy()
    mean_diffs = mean_difference(train, ytr)  # all layers at once, as the shipped bundles were made
    for k in range(train.shape[1]):
        xk = train[:, k]
        w, bias = logistic_probe(xk.numpy(), ytr.numpy(), seed, probe_c)
        if method == "mean-diff":  # already at its natural scale
            v = mean_diffs[k]
        else:
            d = torch.from_numpy(w).float() if method == "logistic" else direction(method, xk, ytr, groups, seed)[0]
            v = steering_vector(d, xk, ytr)
        u = v / v.norm()
        ptr = xk @ u
        pos, neg = ptr[ytr == 1], ptr[ytr == 0]
        logits = test[:, k].numpy() @ w + bias
        stats = LayerStats(
            norm=float(v.norm()),
            pos_mean=float(pos.mean()),
            neg_mean=float(neg.mean()),
            pos_std=float(pos.std()),
            neg_std=float(neg.std()),
            auroc=auroc(logits, y_np),
            accuracy=accuracy(logits, y_np),
        )
        dir_auroc = auroc((test[:, k] @ u).numpy(), y_np)
        fits.append(LayerFit(v, stats, torch.from_numpy(w).float(), bias, dir_auroc))
    return fits


VALIDATION_SALT = "validation:"


def layer_probe_scores(x: torch.Tensor, y: torch.Tensor, score: torch.Tensor, seed: int, probe_c: float = PROBE_C
                       ) -> list[np.ndarray]:
    """Per layer, the logits on ``score`` ``[M, L, H]`` of a logistic probe fitted on ``x``, ``y``."""
    out = []
    for k in range(x.shape[1]):
        w, b = logistic_probe(x[:, k].numpy(), y.numpy(), seed, probe_c)
        out.append(score[:, k].numpy() @ w + b)
    return out


def validation_aurocs(x: torch.Tensor, y: torch.Tensor, groups: Sequence[str], val_frac: float, seed: int,
                      probe_c: float = PROBE_C) -> tuple[list[float | None], int]:
    """Per layer, the AUROC of a logistic probe fitted on the training groups outside a seeded
    validation split (``val_frac`` of the groups, salted apart from the train/test split) and
    scored on it; and the validation size. Choosing the probe layer on these keeps the test set
    out of every decision the bundle makes."""
    fit, val = split_indices(groups, val_frac, seed, VALIDATION_SALT)
    if not val or len(set(y[val].tolist())) < 2 or len(set(y[fit].tolist())) < 2:
        raise DatasetError(f"the validation split ({val_frac:g} of {len(set(groups))} groups) needs both classes on "
                         "both sides: more groups or another fraction")
    ifit, ival = torch.tensor(fit), torch.tensor(val)
    scores = layer_probe_scores(x[ifit], y[ifit], x[ival], seed, probe_c)
    return [auroc(s, y[ival].numpy()) for s in scores], len(val)


def platt(scores: np.ndarray, labels: np.ndarray, seed: int) -> Calibration:
    """Platt scaling ``p = sigmoid(a * score + b)``, fitted by (nearly unregularised) logistic
    regression of the labels on the scores."""
    lr = LogisticRegression(C=1e4, random_state=seed)
    lr.fit(scores.reshape(-1, 1), labels)
    return Calibration(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def recommend_layers(aurocs: Sequence[float | None], n: int = 3, min_layer_frac: float = 0.15) -> tuple[int, list[int]]:
    """The best layer by held-out AUROC, skipping the first ``min_layer_frac`` of layers (they
    barely separate concepts) and the last one, and ``n`` consecutive layers centred on it."""
    num = len(aurocs)
    first = min(max(1, int(min_layer_frac * num)), max(0, num - 2))
    last = max(first + 1, num - 1)
    best = max(range(first, last), key=lambda k: aurocs[k] or 0.0)
    lo = max(0, min(best - n // 2, num - n))
    return best, list(range(lo, lo + n))


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
    method: Method = "mean-diff",
    groups: Sequence[str] | None = None,
    created_at: str | None = None,
    probe_c: float = PROBE_C,
    select_frac: float | None = None,
) -> DirectionBundle:
    """``select_frac``: choose the probe layer on a validation split of the training groups
    (:func:`validation_aurocs`) instead of on the test data, whose numbers are then unbiased by
    the choice; ``probe_c``: the logistic probe's inverse L2 strength."""
    fits = fit_layers(train, ytr, test, yte, seed, method, groups, probe_c)
    selection: dict[str, float] = {}
    if select_frac:
        val, n_val = validation_aurocs(train, ytr, groups or [str(i) for i in range(len(ytr))], select_frac, seed,
                                       probe_c)
        best, recommended = recommend_layers(val, n_recommended, min_layer_frac)
        selection = {"select_frac": select_frac, "n_validation": float(n_val),
                     **({"validation_auroc": v} if (v := val[best]) is not None else {})}
    else:
        best, recommended = recommend_layers([f.stats.auroc for f in fits], n_recommended, min_layer_frac)
    st = fits[best].stats
    w, bias = fits[best].probe_w, fits[best].probe_b
    calib = platt((train[:, best] @ w + bias).numpy(), ytr.numpy(), seed)
    dir_metrics = {f"direction_auroc.{k}": f.direction_auroc for k, f in enumerate(fits) if f.direction_auroc is not None}
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
        training=Training(
            method=method, datasets=list(datasets), position="last", seed=seed,
            notes=f"probe: logistic, C={probe_c:g}, layer chosen on "
            + (f"a {select_frac:g} validation split of the training groups" if select_frac else "the held-out data"),
        ),
        metrics={
            **({"heldout_auroc": st.auroc} if st.auroc is not None else {}),
            "heldout_accuracy": float(st.accuracy or 0.0),
            "probe_layer": float(best),
            "n_train": float(len(ytr)),
            "n_test": float(len(yte)),
            "probe_c": probe_c,
            **selection,
            **dir_metrics,
        },
        created_at=created_at or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return DirectionBundle(
        meta=meta, vectors={k: f.vector.clone() for k, f in enumerate(fits)}, probe_weight=w.clone()
    )
