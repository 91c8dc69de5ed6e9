"""Probe selection, per-token score summaries and risk flags for responses.

A probe's score is the calibrated probability of its bundle's positive class ("true" for a truth
probe, "sycophantic" for a sycophancy probe). A response is *flagged* by a probe when its mean
score is on the risky side of the threshold: below it for truth-kind probes, above it for the
others. Thresholds come from the bundle (``probe.threshold``) unless the settings override them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from server.errors import bad_request
from server.responses import ProbeSummary
from steering.bundle import DirectionBundle, ProbeFrame

LOW_IS_RISK_KINDS = frozenset({"truth", "honesty", "factuality"})


@dataclass(frozen=True)
class ProbeInfo:
    name: str
    threshold: float
    low_is_risk: bool
    frame: ProbeFrame | None = None  # how /v1/probes/score frames a text for this probe (None: as given)

    def flagged(self, mean: float) -> bool:
        return mean < self.threshold if self.low_is_risk else mean > self.threshold


def available_probes(bundles: Mapping[str, DirectionBundle], overrides: Mapping[str, float]) -> dict[str, ProbeInfo]:
    out = {}
    for name, b in bundles.items():
        if b.meta.probe is None:
            continue
        frame = b.meta.probe.frame if b.meta.probe.frame is not None and b.meta.probe.frame.kind != "raw" else None
        out[name] = ProbeInfo(name, overrides.get(name, b.meta.probe.threshold), b.meta.kind in LOW_IS_RISK_KINDS,
                              frame)
    return out


def select_probes(requested: Sequence[str] | Literal["all"] | None, probes: Mapping[str, ProbeInfo],
                  param: str = "probes") -> list[str]:
    """Validate the request's ``probes`` field; the error lists what this server has."""
    if not requested:
        return []
    have = sorted(probes)
    if requested == "all":
        if not have:
            raise bad_request("no loaded direction bundle carries a probe", param, "unsupported")
        return have
    out: list[str] = []
    for i, name in enumerate(requested):
        if name not in probes:
            raise bad_request(
                f"unknown probe '{name}'; available probes: {', '.join(have) or '(none)'}", f"{param}[{i}]",
                "unknown_probe",
            )
        if name not in out:
            out.append(name)
    return out


def summarize(tokens: list[float | None], info: ProbeInfo) -> ProbeSummary:
    """Mean, min and last over the scores that arrived, and whether the mean is flagged."""
    vals = [t for t in tokens if t is not None]
    if not vals:
        return ProbeSummary(mean=None, min=None, last=None, tokens=tokens, flagged=False)
    mean = sum(vals) / len(vals)
    return ProbeSummary(mean=mean, min=min(vals), last=vals[-1], tokens=tokens, flagged=info.flagged(mean))
