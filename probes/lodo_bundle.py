"""Bundles from a leave-one-domain-out winner: the domain-general ``truth`` and ``truth-<type>``.

The probe is the winning recipe refitted on the train + validation splits of the bundle's domains
at the winner's layer (a band winner ships its centre layer: the engine reads one layer per probe),
Platt-calibrated on the same data; its frame travels in ``probe.frame``. Steering vectors are, per
layer, the mean over domains of each domain's class-mean difference (every domain counts once), at
their natural scale. ``layer_stats[k].auroc`` is the AUROC of that layer's steering vector as a
scorer on the domains' test splits, pooled (the recipe itself is fitted at the probe layer only); ``metrics`` records the LODO AUROCs (general bundle) and the in-domain test
AUROC (``heldout_auroc``). Nothing here sees a test split before the numbers are recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import torch

from probes import datasets as ds
from probes.lodo import Candidate, DomainData
from probes.methods import accuracy, auroc
from probes.recipes import get_recipe
from probes.train import platt
from steering.bundle import (
    BundleMetadata,
    DatasetRef,
    DirectionBundle,
    LayerStats,
    ModelRef,
    ProbeMeta,
    Training,
)
from steering.bundle import ProbeFrame as Frame
from steering.model_info import ModelInfo

DESCRIPTIONS = {
    "truth": "Domain-general truth direction and probe: true minus false statements over every truth domain "
             "(definitional, empirical, logical, fictional, ethical; affirmative and negated).",
}


def _side(doms: Sequence[DomainData], which: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, ids = [], [], []
    for k, d in enumerate(doms):
        idx = d.side(which, seed)
        xs.append(d.x[idx])
        ys.append(d.y[idx])
        ids.append(np.full(len(idx), k))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)


def _layer_stats(v: np.ndarray, x: np.ndarray, y: np.ndarray, test_auc: float | None, test_acc: float) -> LayerStats:
    u = v / (np.linalg.norm(v) or 1.0)
    p = x @ u
    return LayerStats(norm=float(np.linalg.norm(v)), pos_mean=float(p[y == 1].mean()), neg_mean=float(p[y == 0].mean()),
                      pos_std=float(p[y == 1].std()), neg_std=float(p[y == 0].std()), auroc=test_auc, accuracy=test_acc)


def build(name: str, kind: str, description: str, doms: Sequence[DomainData], best: Candidate, frame: Frame,
          info: ModelInfo, refs: Sequence[DatasetRef], seed: int, extra_metrics: dict[str, float]) -> DirectionBundle:
    fit = get_recipe(best.recipe)
    xtr, ytr, dtr = _side(doms, "trainval", seed)
    xte, yte, _ = _side(doms, "test", seed)
    vectors: dict[int, torch.Tensor] = {}
    stats: dict[str, LayerStats] = {}
    for k in range(xtr.shape[1]):  # per layer: the steering vector, scored along its own direction
        diffs = [xtr[(dtr == j) & (ytr == 1), k].mean(0) - xtr[(dtr == j) & (ytr == 0), k].mean(0)
                 for j in np.unique(dtr) if {0, 1} <= set(ytr[dtr == j].tolist())]
        v = np.mean(diffs, axis=0).astype(np.float32)
        proj = xte[:, k] @ v
        mid = 0.5 * float((xtr[ytr == 1, k] @ v).mean() + (xtr[ytr == 0, k] @ v).mean())
        vectors[k] = torch.from_numpy(v)
        stats[str(k)] = _layer_stats(v, xtr[:, k], ytr, auroc(proj, yte), accuracy(proj - mid, yte))
    layer = best.layers[len(best.layers) // 2]
    w, b = fit(xtr[:, layer], ytr, dtr, seed)
    calib = platt(xtr[:, layer] @ w + b, ytr, seed)
    lo = max(0, min(layer - 1, xtr.shape[1] - 3))
    recommended = list(range(lo, lo + 3))
    test_logits = xte[:, layer] @ w + b
    heldout = auroc(test_logits, yte)
    meta = BundleMetadata(
        name=name, kind=kind, description=description, model=ModelRef.of(info), layers=sorted(vectors),
        recommended_layers=recommended, recommended_strength=1.0, layer_stats=stats,
        probe=ProbeMeta(layer=layer, bias=float(b), calibration=calib, method=best.recipe,
                        frame=frame),
        training=Training(method="domain-mean-diff", datasets=list(refs), position=f"last token, frame {frame.name}",
                          seed=seed, notes=f"probe: {best.recipe} at layer {layer}, chosen by leave-one-domain-out "
                          "validation AUROC; fitted on the train + validation splits of every domain"),
        metrics={**({"heldout_auroc": heldout} if heldout is not None else {}),
                 "heldout_accuracy": accuracy(test_logits, yte), "probe_layer": float(layer),
                 "n_train": float(len(ytr)), "n_test": float(len(yte)), **extra_metrics},
        created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return DirectionBundle(meta=meta, vectors=vectors, probe_weight=torch.from_numpy(np.asarray(w, np.float32)))


def lodo_metrics(best: Candidate) -> dict[str, float]:
    out: dict[str, float] = {"lodo_test_mean": best.test.mean(), "lodo_test_min": best.test.minimum()}
    if (p := best.test.pooled()) is not None:
        out["lodo_test_pooled"] = p
    if (n := best.test.negated_auroc()) is not None:
        out["lodo_test_negated"] = n
    for dom, v in best.test.per_domain.items():
        if v is not None:
            out[f"lodo_test_auroc.{dom}"] = v
    for t, v in best.test.by_type().items():
        if v is not None:
            out[f"lodo_test_type.{t}"] = v
    return out


def domain_bundles(doms: Sequence[DomainData], best: Candidate, frame: Frame, info: ModelInfo,
                   data: dict[str, ds.Dataset], seed: int) -> list[DirectionBundle]:
    """The general ``truth`` bundle and one ``truth-<type>`` per truth type with two or more domains'
    worth of data (a type's bundle needs both classes)."""
    def refs(ds_: Sequence[DomainData]) -> list[DatasetRef]:
        return [DatasetRef(name=d.name, path=data[d.name].path, license=data[d.name].license, rows=len(d.y))
                for d in ds_]

    out = [build("truth", "truth", DESCRIPTIONS["truth"], doms, best, frame, info, refs(doms), seed, lodo_metrics(best))]
    for t in sorted({d.truth_type for d in doms}):
        sub = [d for d in doms if d.truth_type == t]
        desc = (f"{t.capitalize()} truth direction and probe: true minus false {t} statements "
                f"({', '.join(d.name for d in sub)}), for domain-specific steering.")
        out.append(build(f"truth-{t}", "truth", desc, sub, best, frame, info, refs(sub), seed, {}))
    return out
