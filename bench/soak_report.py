"""The soak's bookkeeping: memory samples of the API and engine processes, outcome tallies, and
the report (markdown + PNG of memory over time).

Pure apart from :func:`rss_of` (psutil) and :func:`write_report` (files); the verdict is decided
by :func:`verdict` from the numbers alone: 0 5xx, 0 greedy mismatches, RSS growth after warm-up
under ``max_growth`` for each process group.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    t_s: float  # since the soak started
    api_mb: float
    engine_mb: float


@dataclass
class Tally:
    """Outcomes by scenario and HTTP status (0: the client itself hung up, as scripted)."""

    by_scenario: Counter[tuple[str, int]] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # scenario: what was wrong (first 50)

    def add(self, scenario: str, status: int, problem: str | None = None) -> None:
        self.by_scenario[(scenario, status)] += 1
        if problem is not None and len(self.unexpected) < 50:
            self.unexpected.append(f"{scenario}: {problem}")

    @property
    def total(self) -> int:
        return sum(self.by_scenario.values())

    @property
    def server_errors(self) -> int:
        return sum(n for (_s, status), n in self.by_scenario.items() if status >= 500)


def rss_of(pid: int) -> tuple[float, float]:
    """RSS in MB of process ``pid`` and of all its descendants (the engine core, its workers)."""
    import psutil

    proc = psutil.Process(pid)
    api = proc.memory_info().rss
    engine = 0
    for child in proc.children(recursive=True):
        try:
            engine += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return api / 2**20, engine / 2**20


def growth(samples: list[Sample], warmup_s: float) -> dict[str, float | None]:
    """Relative RSS growth from the first sample at or after ``warmup_s`` to the last one."""
    after = [s for s in samples if s.t_s >= warmup_s]
    if len(after) < 2:
        return {"api": None, "engine": None}
    first, last = after[0], after[-1]
    return {"api": last.api_mb / first.api_mb - 1 if first.api_mb else None,
            "engine": last.engine_mb / first.engine_mb - 1 if first.engine_mb else None}


def verdict(tally: Tally, grown: dict[str, float | None], max_growth: float) -> list[str]:
    """What failed the targets (empty: all met)."""
    out = []
    if tally.server_errors:
        out.append(f"{tally.server_errors} server errors (5xx)")
    if tally.mismatches:
        out.append(f"{len(tally.mismatches)} greedy results differ from their solo runs")
    if tally.unexpected:
        out.append(f"{len(tally.unexpected)} unexpected responses")
    for name, g in grown.items():
        if g is None:
            out.append(f"{name} RSS growth not measured (too few samples after warm-up)")
        elif g >= max_growth:
            out.append(f"{name} RSS grew {100 * g:.1f}% after warm-up (target < {100 * max_growth:.0f}%)")
    return out


def markdown(meta: dict[str, Any], tally: Tally, samples: list[Sample], grown: dict[str, float | None],
             failed: list[str]) -> str:
    def pct(g: float | None) -> str:
        return "n/a" if g is None else f"{100 * g:+.2f}%"

    lines = [f"# Soak run {meta['date']}", "", f"Machine: {meta['machine']}", "",
             f"Duration {meta['duration_s']:.0f} s, {meta['workers']} concurrent clients, warm-up "
             f"{meta['warmup_s']:.0f} s, memory sampled every {meta['sample_s']:.0f} s. {meta.get('note', '')}", "",
             "**Verdict: " + ("all targets met" if not failed else "; ".join(failed)) + "**", "",
             f"Requests: {tally.total}; 5xx: {tally.server_errors}; greedy mismatches: {len(tally.mismatches)} of "
             f"{meta['spot_checks']} spot checks; RSS growth after warm-up: API {pct(grown['api'])}, "
             f"engine {pct(grown['engine'])}.", "", "| scenario | status | count |", "|---|---|---|"]
    for (scenario, status), n in sorted(tally.by_scenario.items()):
        lines.append(f"| {scenario} | {status or 'client hung up'} | {n} |")
    lines += ["", "| t (s) | API RSS (MB) | engine RSS (MB) |", "|---|---|---|"]
    lines += [f"| {s.t_s:.0f} | {s.api_mb:.0f} | {s.engine_mb:.0f} |" for s in samples]
    for title, items in (("Mismatches", tally.mismatches), ("Unexpected responses", tally.unexpected)):
        if items:
            lines += ["", f"## {title}", ""] + [f"- {x}" for x in items[:50]]
    return "\n".join(lines) + "\n"


def plot(samples: list[Sample], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    t = [s.t_s / 60 for s in samples]
    ax.plot(t, [s.api_mb for s in samples], marker="o", label="API process")
    ax.plot(t, [s.engine_mb for s in samples], marker="o", label="engine processes")
    ax.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("truthsteer soak: memory over time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, meta: dict[str, Any], tally: Tally, samples: list[Sample], max_growth: float) -> list[str]:
    """Write ``out``.md / .png / .json; return what failed the targets."""
    grown = growth(samples, meta["warmup_s"])
    failed = verdict(tally, grown, max_growth)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(meta, tally, samples, grown, failed))
    plot(samples, meta["warmup_s"], out.with_suffix(".png"))
    data = {"meta": meta, "samples": [asdict(s) for s in samples], "growth": grown, "failed": failed,
            "outcomes": [{"scenario": sc, "status": st, "count": n} for (sc, st), n in sorted(tally.by_scenario.items())],
            "mismatches": tally.mismatches, "unexpected": tally.unexpected}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    return failed
