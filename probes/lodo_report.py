"""Writing a leave-one-domain-out search: markdown and JSON tables and PNG plots.

``report.md`` holds the ranked recipe table (validation chooses, test reports), the winner's
per-domain, per-truth-type and negated AUROCs, the transfer matrix (train domain x test domain)
and the Mahalanobis-cosine-vs-transfer fit with its R^2; ``results.json`` the same numbers;
``transfer.png`` and ``mahalanobis.png`` the two plots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probes.lodo import Candidate, Scores, r_squared


def _f(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def scores_json(s: Scores) -> dict[str, Any]:
    return {"mean": s.mean(), "min": s.minimum(), "pooled": s.pooled(), "per_domain": s.per_domain,
            "by_type": s.by_type(), "negated": s.negated_auroc()}


def ranking_table(cands: Sequence[Candidate]) -> str:
    rows = ["| recipe | layer | val mean | test mean | test min | test pooled | test negated |",
            "|---|---|---|---|---|---|---|"]
    for c in cands:
        rows.append(f"| {c.recipe} | {c.label} | {_f(c.val.mean())} | {_f(c.test.mean())} | {_f(c.test.minimum())} "
                    f"| {_f(c.test.pooled())} | {_f(c.test.negated_auroc())} |")
    return "\n".join(rows)


def domain_table(c: Candidate, sizes: dict[str, int]) -> str:
    rows = ["| held-out domain | n (all splits) | validation AUROC | test AUROC |", "|---|---|---|---|"]
    for name in c.test.per_domain:
        rows.append(f"| {name} | {sizes.get(name, 0)} | {_f(c.val.per_domain.get(name))} | "
                    f"{_f(c.test.per_domain[name])} |")
    return "\n".join(rows)


def plot_transfer(m: np.ndarray, names: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    im = ax.imshow(m, vmin=0.3, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("test domain")
    ax.set_ylabel("train domain")
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if m[i, j] < 0.7 else "black")
    fig.colorbar(im, ax=ax, label="AUROC")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mahalanobis(cos: np.ndarray, m: np.ndarray, path: Path, title: str) -> float:
    """Off-diagonal (cosine, transfer AUROC) points with their least-squares line; returns R^2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    off = ~np.eye(len(m), dtype=bool)
    xs, ys = cos[off], m[off]
    r2 = r_squared(xs, ys)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(xs, ys, s=12)
    keep = np.isfinite(xs) & np.isfinite(ys)
    if keep.sum() >= 3:
        slope, icpt = np.polyfit(xs[keep], ys[keep], 1)
        grid = np.linspace(xs[keep].min(), xs[keep].max(), 20)
        ax.plot(grid, slope * grid + icpt, color="C1", label=f"R² = {r2:.2f}")
        ax.legend()
    ax.set_xlabel("Mahalanobis cosine of the two domains' probes")
    ax.set_ylabel("transfer AUROC (train -> test domain)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return r2


def write(out: Path, title: str, notes: str, frames: dict[str, list[Candidate]], chosen: tuple[str, Candidate],
          transfer: np.ndarray, cos: np.ndarray, names: Sequence[str], sizes: dict[str, int]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    frame, best = chosen
    plot_transfer(transfer, names, out / "transfer.png", f"{title}: {best.recipe} @ {best.label}, frame {frame}")
    r2 = plot_mahalanobis(cos, transfer, out / "mahalanobis.png", f"{title}: transfer vs Mahalanobis cosine")
    parts = [f"# {title}\n", notes, "\n## Candidates (chosen by mean LODO validation AUROC; test reported after)\n"]
    for name, cands in frames.items():
        parts += [f"\n### Frame `{name}`\n", ranking_table(cands)]
    by_type = best.test.by_type()
    parts += [
        f"\n## Winner: frame `{frame}`, `{best.recipe}` at layer {best.label}\n",
        f"LODO test: mean {_f(best.test.mean())}, min {_f(best.test.minimum())}, pooled {_f(best.test.pooled())}, "
        f"negated {_f(best.test.negated_auroc())}; by truth type (pooled over held-out domains): "
        + ", ".join(f"{t} {_f(v)}" for t, v in by_type.items()) + "\n",
        domain_table(best, sizes),
        f"\n\n## Transfer (train on one domain, test on another) and Mahalanobis cosine\n\n"
        f"![transfer](transfer.png)\n\nR² of transfer AUROC on the Mahalanobis cosine of the two domains' "
        f"probes (off-diagonal pairs): **{_f(r2)}**\n\n![mahalanobis](mahalanobis.png)\n",
    ]
    (out / "report.md").write_text("\n".join(parts))
    payload = {"frames": {f: [{"recipe": c.recipe, "layers": list(c.layers), "val": scores_json(c.val),
                               "test": scores_json(c.test)} for c in cs] for f, cs in frames.items()},
               "chosen": {"frame": frame, "recipe": best.recipe, "layers": list(best.layers)},
               "transfer": {"domains": list(names), "auroc": np.where(np.isfinite(transfer), transfer, -1).tolist(),
                            "mahalanobis_cosine": cos.tolist(), "r2": r2},
               "sizes": sizes}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=float))
    return out / "report.md"
