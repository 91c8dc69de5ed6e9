"""Tables, ratios and the plot of a load-generator run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from bench.loadstats import TAIL_KEYS

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BASELINE = "plain vLLM"


def _paired(m: dict[str, Any], b: dict[str, Any], key: str = "tokens_per_s") -> list[float] | None:
    """Per-round ratios of ``key`` when both rows ran the same rounds (an interleaved run), else None."""
    xs, bs = m.get(f"rounds_{key}"), b.get(f"rounds_{key}")
    if not xs or not bs or len(xs) != len(bs) or min(bs) <= 0:
        return None
    return [x / y for x, y in zip(xs, bs, strict=True)]


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each scenario's tokens/s over plain vLLM's, per load shape (measured ones only): the median
    of the per-round ratios when both ran the same interleaved rounds (round r of a scenario
    against round r of plain vLLM, minutes apart at most), else the ratio of the two figures."""
    base = results.get(BASELINE, {})
    out: dict[str, dict[str, float]] = {}
    for name, row in results.items():
        if "unsupported" in row:
            continue
        out[name] = {}
        for shape, m in row.items():
            b = base.get(shape)
            if b is None or not b["tokens_per_s"] > 0:
                continue
            paired = _paired(m, b)
            r = float(np.median(paired)) if paired else m["tokens_per_s"] / b["tokens_per_s"]
            out[name][shape] = round(r, 3)
    return out


def ratio_ranges(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """(lowest, highest) per-round ratio to plain vLLM, for the rows an interleaved run paired."""
    base = results.get(BASELINE, {})
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, row in results.items():
        if "unsupported" in row or name == BASELINE:
            continue
        for shape, m in row.items():
            paired = _paired(m, base[shape]) if shape in base else None
            if paired:
                out.setdefault(name, {})[shape] = (round(min(paired), 3), round(max(paired), 3))
    return out


def tail_ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per scenario and shape, the median over rounds of each tail latency (TTFT p99, ITL p99)
    over plain vLLM's in the same round (rows of an interleaved run that recorded per-round tails)."""
    base = results.get(BASELINE, {})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, row in results.items():
        if "unsupported" in row or name == BASELINE:
            continue
        for shape, m in row.items():
            for key in TAIL_KEYS:
                paired = _paired(m, base[shape], key) if shape in base else None
                if paired:
                    out.setdefault(name, {}).setdefault(shape, {})[key] = round(float(np.median(paired)), 3)
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
             _method(res), "",
             "## Ratio of output tokens/s to plain vLLM (headline)", "",
             "| scenario | " + " | ".join(shapes) + " |", "|---" * (len(shapes) + 1) + "|"]
    for name, row in sc.items():
        if "unsupported" in row:
            lines.append(f"| {name} | {row['unsupported']} |" + " |" * (len(shapes) - 1))
        else:
            lines.append(f"| {name} | " + " | ".join(_f(rat.get(name, {}).get(s), 3) for s in shapes) + " |")
    spread = ratio_ranges(sc)
    if spread:
        lines += ["", "## Lowest - highest per-round ratio (the noise the medians above sit in)", "",
                  "| scenario | " + " | ".join(shapes) + " |", "|---" * (len(shapes) + 1) + "|"]
        for name, by_shape in spread.items():
            cells = [f"{by_shape[s][0]:.3f} - {by_shape[s][1]:.3f}" if s in by_shape else "n/a" for s in shapes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    tails = tail_ratios(sc)
    if tails:
        lines += ["", "## Tail latency over plain vLLM's (median of per-round ratios; below 1: shorter tails)", "",
                  "| scenario | shape | TTFT p99 | ITL p99 |", "|---|---|---|---|"]
        for name, tails_of in tails.items():
            for s, r in tails_of.items():
                lines.append(f"| {name} | {s} | {_f(r.get('ttft_p99_ms'), 3)} | {_f(r.get('itl_p99_ms'), 3)} |")
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


def _method(res: dict[str, Any]) -> str:
    rounds = res.get("rounds", 1)
    if res.get("interleaved"):
        how = ("both servers up at once; in each round every scenario ran once, the order rotated by one "
               "scenario per round")
    else:
        how = "one server at a time, each scenario's rounds back to back"
    return (f"Rounds: {rounds} per shape ({how}). Figures: the run with the median tokens/s; ratios: median "
            "of the per-round ratios to plain vLLM (the HF baseline runs once: ratio of the figures).")


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
