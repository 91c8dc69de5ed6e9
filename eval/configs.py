"""Named request configurations the evaluation compares (body fields added to each request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# echo scoring under DoLa: the server contrasts the prompt logprobs per position (docs/decoding.md);
# option tokens outside the plausible set (alpha 0.1) score -9999, as the server writes -inf
DOLA: dict[str, Any] = {"method": "dola", "premature_layers": "high"}
TRUTH_STRENGTHS = (1.0, 2.0, 4.0)
TRUTH_GATE: dict[str, Any] = {"probe": "truth", "below": 0.35, "window": 2, "hold": 4}


@dataclass(frozen=True)
class Config:
    name: str
    extra: dict[str, Any] = field(default_factory=dict)


def truth_op(strength: float, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"direction": "truth", "op": "add", "strength": strength}
    if gate:
        op["gate"] = gate
    return op


def truthfulness() -> list[Config]:
    """TruthfulQA MC by log-likelihood: no steering, truth steering at a few strengths, DoLa, both."""
    out = [Config("none")]
    out += [Config(f"truth +{s:g}", {"steering": [truth_op(s)]}) for s in TRUTH_STRENGTHS]
    out += [Config("DoLa", {"decoding": DOLA}),
            Config(f"truth +{TRUTH_STRENGTHS[1]:g} + DoLa", {"steering": [truth_op(TRUTH_STRENGTHS[1])], "decoding": DOLA})]
    return out


def gating() -> list[Config]:
    """Generation: gated vs constant vs no steering (the gate acts on generated tokens only)."""
    s = TRUTH_STRENGTHS[-1]
    return [Config("none"), Config(f"truth +{s:g} constant", {"steering": [truth_op(s)]}),
            Config(f"truth +{s:g} gated", {"steering": [truth_op(s, TRUTH_GATE)]})]


def sycophancy() -> list[Config]:
    return [Config("none"),
            Config("sycophancy -1", {"steering": [{"direction": "sycophancy", "op": "add", "strength": -1.0}]}),
            Config("sycophancy -2", {"steering": [{"direction": "sycophancy", "op": "add", "strength": -2.0}]}),
            Config("sycophancy ablate", {"steering": [{"direction": "sycophancy", "op": "ablate"}]})]
