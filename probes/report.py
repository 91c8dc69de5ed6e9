"""Geometry and transfer report across datasets (after Ying et al., "The Truthfulness Spectrum
Hypothesis", 2026): per-layer held-out AUROC of each method, cosine and Mahalanobis cosine
similarity between directions trained on different datasets, and the transfer matrix (train on A,
AUROC on B's held-out split). Markdown plus PNG plots (matplotlib, Agg backend).

Mahalanobis cosine similarity of two scoring directions is ``w1' S w2 / sqrt(w1' S w1 w2' S w2)``
with ``S`` the covariance of the pooled held-out activations of all datasets at that layer: the
correlation of the two scores on the data, which ignores directions the data never vary along.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probes.methods import METHODS, Method, auroc, direction
from probes.train import recommend_layers


@dataclass(frozen=True)
class Split:
    name: str
    xtr: torch.Tensor  # [N, L, H]
    ytr: torch.Tensor
    gtr: list[str]
    xte: torch.Tensor
    yte: torch.Tensor


def sweep(s: Split, method: Method, seed: int) -> list[float | None]:
    """Held-out AUROC per layer of the method's scoring direction."""
    out: list[float | None] = []
    for k in range(s.xtr.shape[1]):
        d, _ = direction(method, s.xtr[:, k], s.ytr, s.gtr, seed)
        out.append(auroc((s.xte[:, k] @ d).numpy(), s.yte.numpy()))
    return out


def cosine_matrix(dirs: Sequence[torch.Tensor], cov: torch.Tensor | None = None) -> np.ndarray:
    """Pairwise cosine similarity; with ``cov``, the Mahalanobis cosine ``a' S b / (|a|_S |b|_S)``."""
    d = torch.stack([x.double() for x in dirs])
    g = d @ (cov.double() if cov is not None else torch.eye(d.shape[1], dtype=torch.float64)) @ d.T
    n = torch.sqrt(torch.diag(g))
    return np.asarray((g / n[:, None] / n[None, :]).numpy())


def transfer_matrix(splits: Sequence[Split], dirs: Sequence[torch.Tensor], layer: int) -> np.ndarray:
    """``[i, j]``: AUROC on split j's held-out items of the direction trained on split i."""
    m = np.full((len(splits), len(splits)), np.nan)
    for i, d in enumerate(dirs):
        for j, s in enumerate(splits):
            a = auroc((s.xte[:, layer] @ d).numpy(), s.yte.numpy())
            m[i, j] = np.nan if a is None else a
    return m


@dataclass(frozen=True)
class Report:
    layer: int
    method: Method
    names: list[str]
    sweeps: dict[str, dict[Method, list[float | None]]]  # dataset -> method -> per-layer AUROC
    cosine: np.ndarray
    mahalanobis: np.ndarray
    transfer: np.ndarray


def compare(splits: Sequence[Split], method: Method, seed: int, layer: int | None = None) -> Report:
    sweeps = {s.name: {m: sweep(s, m, seed) for m in METHODS} for s in splits}
    if layer is None:  # best mean held-out AUROC of the chosen method, by the bundles' layer rule
        num = splits[0].xtr.shape[1]
        mean = [float(np.mean([sweeps[s.name][method][k] or 0.5 for s in splits])) for k in range(num)]
        layer = recommend_layers(mean)[0]
    dirs = [direction(method, s.xtr[:, layer], s.ytr, s.gtr, seed)[0] for s in splits]
    pooled = torch.cat([s.xte[:, layer] for s in splits]).double()
    cov = torch.cov(pooled.T)
    return Report(
        layer=layer,
        method=method,
        names=[s.name for s in splits],
        sweeps=sweeps,
        cosine=cosine_matrix(dirs),
        mahalanobis=cosine_matrix(dirs, cov),
        transfer=transfer_matrix(splits, dirs, layer),
    )


def _matrix_md(names: Sequence[str], m: np.ndarray, corner: str) -> str:
    lines = [f"| {corner} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, n in enumerate(names):
        lines.append(f"| {n} | " + " | ".join(f"{v:.3f}" for v in m[i]) + " |")
    return "\n".join(lines) + "\n"


def write(report: Report, out: Path, title: str, notes: str = "") -> Path:
    """``out/report.md`` with ``auroc_by_layer.png``, ``similarity.png``, ``transfer.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    names = report.names
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), sharey=True, squeeze=False, layout="constrained")
    for ax, n in zip(axes[0], names, strict=True):
        for m, curve in report.sweeps[n].items():
            ax.plot([np.nan if v is None else v for v in curve], label=m)
        ax.axvline(report.layer, color="grey", lw=0.8, ls="--")
        ax.axhline(0.5, color="black", lw=0.5)
        ax.set_title(n)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("held-out AUROC")
    axes[0][0].legend(fontsize=8)
    fig.savefig(out / "auroc_by_layer.png", dpi=110)
    plt.close(fig)

    def heat(mats: Sequence[tuple[str, np.ndarray, float, float]], fname: str) -> None:
        fig, axes = plt.subplots(1, len(mats), figsize=(4.6 * len(mats), 4), squeeze=False, layout="constrained")
        for ax, (t, m, lo, hi) in zip(axes[0], mats, strict=True):
            im = ax.imshow(m, vmin=lo, vmax=hi, cmap="viridis")
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
            ax.set_title(t, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)

    heat([("cosine", report.cosine, -1, 1), ("Mahalanobis cosine", report.mahalanobis, -1, 1)], "similarity.png")
    heat([("transfer AUROC (row: train, column: test)", report.transfer, 0, 1)], "transfer.png")

    lines = [f"# {title}", "", notes, "", f"Method `{report.method}`, geometry at layer {report.layer}.", ""]
    lines += ["## Held-out AUROC by layer", "", "![AUROC by layer](auroc_by_layer.png)", ""]
    best_rows = ["| dataset | " + " | ".join(f"{m} (best layer)" for m in METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for n in names:
        cells = []
        for m in METHODS:
            c = [v or 0.0 for v in report.sweeps[n][m]]
            k = int(np.argmax(c))
            cells.append(f"{c[k]:.3f} ({k})")
        best_rows.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [*best_rows, ""]
    lines += ["## Transfer (train on row, AUROC on column's held-out split)", "", _matrix_md(names, report.transfer, "train \\ test")]
    lines += ["![transfer](transfer.png)", "", "## Similarity of directions", "", "Cosine:", "", _matrix_md(names, report.cosine, "")]
    lines += ["Mahalanobis cosine:", "", _matrix_md(names, report.mahalanobis, ""), "![similarity](similarity.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
