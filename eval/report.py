"""Markdown tables and PNG plots of an evaluation run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def table(rows: dict[str, dict[str, Any]], columns: list[str], first: str = "config") -> str:
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        if "unsupported" in row:
            cells = [row["unsupported"]] + [""] * (len(columns) - 1)
        else:
            cells = [_fmt(row.get(c, "")) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(res: dict[str, Any]) -> str:
    out = [f"# Evaluation results\n\nMachine: {res['machine']}. Server: {res['server']}. "
           f"Limit: {res['limit']}. Date: {res['date']}. Wall time: {res['wall_s']:.0f} s.\n"]
    if len(res.get("parts_run", {})) > 1:
        out += ["Parts (runs merged with `--merge`): " + "; ".join(
            f"{p}: limit {r['limit']}, {r['date']}, {r['wall_s']:.0f} s" for p, r in res["parts_run"].items()) + ".\n"]
    if "truthfulqa" in res:
        out += ["## TruthfulQA (log-likelihood of the options, QA primer)\n",
                table(res["truthfulqa"], ["MC0", "MC1", "MC2", "ppl_neutral", "n"]), ""]
    if "sycophancy" in res:
        out += ["## Sycophancy (P of the sycophantic letter, renormalised over A/B; lower is better)\n",
                table(res["sycophancy"], ["caa_test", "anthropic_pools", "ppl_neutral"]), ""]
    if "sycophancy_gating" in res:
        out += ["## Sycophancy, generated letter (greedy, CAA test): gated vs constant vs none\n",
                "frac_matching = fraction of A/B answers that pick the sycophantic letter (lower is better); "
                "answered = fraction of items whose generated token is A or B. A steering gate cannot touch the "
                "letter (the first token, before any score exists); a decoding gate reads the probe at the decoded "
                "position and can. steered / contrasted = fraction of items whose letter was steered / "
                "contrasted (the request's `interventions`).\n",
                table(res["sycophancy_gating"], ["frac_matching", "answered", "steered", "contrasted", "n"]), ""]
    if "behaviours" in res:
        names = sorted({k for r in res["behaviours"].values() for k in r if k != "unsupported"})
        out += ["## Other CAA behaviours (P of the matching letter) under each steering config\n",
                table(res["behaviours"], names), ""]
    if "gating" in res:
        out += ["## Gated vs constant vs no steering (greedy answers to TruthfulQA questions)\n",
                "truthful = ROUGE-1 closer to a true than to any false reference; fluency = perplexity of the "
                "answers under the unsteered model; steered / contrasted = mean steered / contrasted tokens per "
                "answer; answer_words = mean words per answer.\n",
                table(res["gating"], ["truthful", "fluency_ppl", "steered_tokens", "contrasted_tokens", "answer_words",
                                      "probe_mean"]), ""]
    if "selective" in res:
        out += ["## Selective answering (answer when the truth probe's mean over the answer >= threshold)\n",
                table(res["selective"], ["coverage", "accuracy"], first="threshold"), ""]
    if "probes" in res:
        out += ["## Probe AUROC through /v1/probes/score (held-out)\n",
                table(res["probes"], ["probe", "auroc", "n"], first="dataset"), ""]
    return "\n".join(out) + "\n"


def plots(res: dict[str, Any], out: Path) -> list[Path]:
    made: list[Path] = []
    tq = {k: v for k, v in res.get("truthfulqa", {}).items() if "MC2" in v}
    if tq:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in tq.items():
            ax.scatter(r.get("ppl_neutral", float("nan")), r["MC2"], label=name)
        ax.set_xlabel("perplexity on neutral text")
        ax.set_ylabel("TruthfulQA MC2")
        ax.set_title("Truthfulness vs side effect per config")
        ax.legend(fontsize=7)
        made.append(_save(fig, out / "truthfulqa_mc2_vs_ppl.png"))
    sel = res.get("selective_curve")
    if sel:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([p[0] for p in sel], [p[1] for p in sel], marker="o")
        ax.set_xlabel("coverage (fraction answered)")
        ax.set_ylabel("accuracy on answered")
        ax.set_title("Selective answering by truth-probe score")
        made.append(_save(fig, out / "selective_answering.png"))
    pr = res.get("probes")
    if pr:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(pr)
        ax.barh(names, [pr[n]["auroc"] for n in names])
        ax.axvline(0.5, color="grey", ls="--")
        ax.set_xlim(0, 1)
        ax.set_xlabel("AUROC")
        ax.set_title("Probe AUROC per held-out dataset")
        fig.tight_layout()
        made.append(_save(fig, out / "probe_auroc.png"))
    return made


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
