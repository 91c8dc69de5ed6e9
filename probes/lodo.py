"""Leave-one-domain-out (LODO) search for truth-probe recipes that generalise across domains.

Every domain (a topic or kind of statement: cities, arithmetic, fiction, ...) is split by group
into train / validation / test (60 / 20 / 20, seeded hashes of the group, so no near-duplicate
crosses a split). A candidate is a recipe (:mod:`probes.recipes`) at a layer (or the mean of a band
of layers). Its LODO score on a side (``val`` or ``test``) is, for every domain ``h``, the AUROC on
``h``'s side of a probe fitted on the *training* splits of all other domains; a domain never
informs the probe it is scored with.

Choices are made on validation only: :func:`search` picks each recipe's layer by its mean LODO
validation AUROC, ranks recipes by that, and only then reports the test side. ``pooled`` AUROCs
score all held-out domains together (as an evaluation of mixed statements does, so offsets
between domains count); ``by_type`` and ``negated`` pool by truth type and by negation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from probes.datasets import in_test
from probes.methods import auroc
from probes.recipes import get_recipe

TEST_FRAC, VAL_FRAC = 0.2, 0.25  # of all groups; of the remaining groups
# searched and scored, never fitted into a shipped bundle: the intervention evaluation's benchmark
NEVER_IN_BUNDLES = ("truthfulqa",)


@dataclass(frozen=True)
class DomainData:
    """One domain's activations ``x`` ``[N, L, H]`` (float32) with labels, groups and flags."""

    name: str
    truth_type: str
    x: np.ndarray
    y: np.ndarray
    groups: Sequence[str]
    negated: np.ndarray  # bool [N]

    def side(self, which: str, seed: int) -> np.ndarray:
        """Indices of the ``train`` / ``val`` / ``test`` split (by group)."""
        test = np.array([in_lodo_test(g, seed) for g in self.groups], dtype=bool)
        val = ~test & np.array([in_test(g, VAL_FRAC, seed, "lodo-val:") for g in self.groups], dtype=bool)
        mask = {"test": test, "val": val, "train": ~test & ~val, "trainval": ~test}[which]
        return np.flatnonzero(mask)


def in_lodo_test(group: str, seed: int = 0) -> bool:
    """Whether a statement's group is on a domain's test side: the groups that neither the search's
    choices nor the bundles it ships (fitted on train + validation) ever see. It depends on the
    group alone, so it holds for a domain's every statement, not only a run's subsample."""
    return in_test(group, TEST_FRAC, seed, "lodo-test:")


Layers = tuple[int, ...]  # one layer, or a band whose activations are averaged


def features(x: np.ndarray, layers: Layers) -> np.ndarray:
    return x[:, list(layers)].mean(1) if len(layers) > 1 else x[:, layers[0]]


def stack(domains: Sequence[DomainData], side: str, layers: Layers, seed: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels and domain ids of ``side`` of every domain, concatenated."""
    xs, ys, ds = [], [], []
    for k, dom in enumerate(domains):
        idx = dom.side(side, seed)
        xs.append(features(dom.x[idx], layers))
        ys.append(dom.y[idx])
        ds.append(np.full(len(idx), k))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ds)


@dataclass
class Scores:
    """Held-out scores of one candidate: per domain, and pooled with their flags."""

    per_domain: dict[str, float | None] = field(default_factory=dict)
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    negated: list[np.ndarray] = field(default_factory=list)

    def _cat(self, which: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = range(len(self.scores)) if which is None else which
        return (np.concatenate([self.scores[i] for i in keep]), np.concatenate([self.labels[i] for i in keep]),
                np.concatenate([self.negated[i] for i in keep]))

    def mean(self) -> float:
        vals = [v for v in self.per_domain.values() if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    def minimum(self) -> float:
        vals = [v for v in self.per_domain.values() if v is not None]
        return float(np.min(vals)) if vals else float("nan")

    def pooled(self) -> float | None:
        s, y, _ = self._cat()
        return auroc(s, y)

    def by_type(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for t in sorted(set(self.types)):
            s, y, _ = self._cat([i for i, tt in enumerate(self.types) if tt == t])
            out[t] = auroc(s, y)
        return out

    def negated_auroc(self) -> float | None:
        s, y, neg = self._cat()
        return auroc(s[neg], y[neg]) if neg.any() else None


def lodo(domains: Sequence[DomainData], recipe: str, layers: Layers, side: str, seed: int) -> Scores:
    """Each domain's ``side`` scored by ``recipe`` fitted on the other domains' training splits."""
    fit = get_recipe(recipe)
    out = Scores()
    for k, held in enumerate(domains):
        others = [d for j, d in enumerate(domains) if j != k]
        x, y, d = stack(others, "train", layers, seed)
        w, b = fit(x, y, d, seed)
        idx = held.side(side, seed)
        s = features(held.x[idx], layers) @ w + b
        out.per_domain[held.name] = auroc(s, held.y[idx])
        out.scores.append(s)
        out.labels.append(held.y[idx])
        out.types.append(held.truth_type)
        out.negated.append(held.negated[idx].astype(bool))
    return out


@dataclass(frozen=True)
class Candidate:
    recipe: str
    layers: Layers
    val: Scores
    test: Scores

    @property
    def label(self) -> str:
        return f"{self.layers[0]}" if len(self.layers) == 1 else f"{self.layers[0]}-{self.layers[-1]} (mean)"


def layer_grid(num_layers: int, fracs: Sequence[float] = (0.35, 0.45, 0.55, 0.65, 0.75, 0.85)) -> list[int]:
    return sorted({min(num_layers - 1, round(f * (num_layers - 1))) for f in fracs})


def search(domains: Sequence[DomainData], recipes: Sequence[str], layers: Sequence[int], seed: int,
           band: int = 2, band_recipes: Sequence[str] = ("mean-diff", "lda-1")) -> list[Candidate]:
    """Per recipe, the layer (or band of ``2 * band + 1`` layers, for ``band_recipes``) with the best
    mean LODO validation AUROC, then its test scores; sorted best first by validation."""
    num = domains[0].x.shape[1]
    best: list[Candidate] = []
    for recipe in recipes:
        options: list[Layers] = [(k,) for k in layers]
        if band and recipe in band_recipes:
            options += [tuple(range(max(0, k - band), min(num, k + band + 1))) for k in layers]
        scored = [(lodo(domains, recipe, ls, "val", seed), ls) for ls in options]
        val, ls = max(scored, key=lambda t: t[0].mean())
        best.append(Candidate(recipe, ls, val, lodo(domains, recipe, ls, "test", seed)))
    return sorted(best, key=lambda c: -c.val.mean())


def transfer_matrix(domains: Sequence[DomainData], recipe: str, layers: Layers, seed: int
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``M[i, j]``: AUROC on domain ``j``'s test split of ``recipe`` fitted on domain ``i``'s
    training split alone; and each domain's probe weights."""
    fit = get_recipe(recipe)
    n = len(domains)
    m = np.full((n, n), np.nan)
    weights = []
    for i, src in enumerate(domains):
        tr = src.side("train", seed)
        w, b = fit(features(src.x[tr], layers), src.y[tr], np.zeros(len(tr), dtype=int), seed)
        weights.append(w)
        for j, dst in enumerate(domains):
            te = dst.side("test", seed)
            a = auroc(features(dst.x[te], layers) @ w + b, dst.y[te])
            m[i, j] = np.nan if a is None else a
    return m, weights


def mahalanobis_cosines(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Cosines of probe weights under the activations' covariance: ``w_i' S w_j / |w_i|_S |w_j|_S``
    (weights live in the dual space, so ``S`` itself is their metric)."""
    xc = x.astype(np.float64) - x.mean(0)
    w = np.stack(weights).astype(np.float64)
    proj = xc @ w.T  # [N, D]: w' S w = cov of projections
    g = proj.T @ proj / len(x)
    norms = np.sqrt(np.diag(g))
    return np.asarray(g / np.outer(norms, norms))


def r_squared(xs: np.ndarray, ys: np.ndarray) -> float:
    """R^2 of the least-squares line through the points."""
    keep = np.isfinite(xs) & np.isfinite(ys)
    if keep.sum() < 3:
        return float("nan")
    c = np.corrcoef(xs[keep], ys[keep])[0, 1]
    return float(c * c)
