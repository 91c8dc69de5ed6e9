"""Tables, ratios and the plot of a load-generator run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BASELINE = "plain vLLM"


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """tokens/s of each scenario divided by plain vLLM's, per load shape (measured ones only)."""
    base = results.get(BASELINE, {})
    out: dict[str, dict[str, float]] = {}
    for name, row in results.items():
        if "unsupported" in row:
            continue
        out[name] = {shape: round(m["tokens_per_s"] / base[shape]["tokens_per_s"], 3)
                     for shape, m in row.items() if shape in base and base[shape]["tokens_per_s"] > 0}
    return out


def _f(x: Any, nd: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{x:.{nd}f}"


def markdown(res: dict[str, Any]) -> str:
    sc = res["scenarios"]
    shapes = list(res["shapes"])
    rat = res["ratios_to_plain_vllm"]
    lines = [f"# Load generator ({'quick' if res['quick'] else 'full'} run)", "",
             f"Machine: {res['machine']}. Date: {res['date']}. Wall time {res['wall_s']:.0f} s.", "",
             "Shapes: " + "; ".join(f"{k}: {v['requests']} requests, max_tokens {v['max_tokens']}" for k, v in
                                     res["shapes"].items()), "",
             "## Ratio of output tokens/s to plain vLLM (headline)", "",
             "| scenario | " + " | ".join(shapes) + " |", "|---" * (len(shapes) + 1) + "|"]
    for name, row in sc.items():
        if "unsupported" in row:
            lines.append(f"| {name} | {row['unsupported']} |" + " |" * (len(shapes) - 1))
        else:
            lines.append(f"| {name} | " + " | ".join(_f(rat.get(name, {}).get(s), 3) for s in shapes) + " |")
    lines += ["", "## Absolute figures (tokens/s; TTFT and ITL p50/p99 in ms)", "",
              "| scenario | shape | tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |", "|---|---|---|---|---|---|---|"]
    for name, row in sc.items():
        if "unsupported" in row:
            lines.append(f"| {name} | all | {row['unsupported']} | | | | |")
            continue
        for s in shapes:
            m = row[s]
            lines.append(f"| {name} | {s} | {_f(m['tokens_per_s'])} | {_f(m['ttft_p50_ms'], 0)} | "
                         f"{_f(m['ttft_p99_ms'], 0)} | {_f(m['itl_p50_ms'], 0)} | {_f(m['itl_p99_ms'], 0)} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    sc = {k: v for k, v in res["scenarios"].items() if "unsupported" not in v}
    shapes = list(res["shapes"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(sc))
    for j, (name, row) in enumerate(sc.items()):
        xs = [i + j * width for i in range(len(shapes))]
        ax.bar(xs, [row[s]["tokens_per_s"] for s in shapes], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes)
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"truthsteer load generator ({'quick' if res['quick'] else 'full'})\n{res['machine'][:90]}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
