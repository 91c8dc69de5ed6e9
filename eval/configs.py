"""Named request configurations the evaluation compares (body fields added to each request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# DoLa for generation: the paper's adaptive plausibility constraint (alpha 0.1)
DOLA: dict[str, Any] = {"method": "dola", "premature_layers": "high"}
# DoLa for TruthfulQA MC as DoLa's own tfqa_mc_eval.py scores it: the sum over the option's tokens
# of log p_final - log p_premature (echo scoring with echo_scores "contrast", docs/decoding.md),
# not renormalised (post_softmax off) and without the plausibility constraint (relative_top 0.0).
# Renormalised, alpha 0.1 gives every option token outside the plausible set -9999, and alpha 0
# lets implausible tokens with huge contrasts take the whole mass: both rank options by artefacts.
DOLA_MC: dict[str, Any] = {**DOLA, "alpha": 0.0, "echo_scores": "contrast"}
TRUTH_STRENGTHS = (1.0, 2.0, 4.0)
TRUTH_GATE: dict[str, Any] = {"probe": "truth", "below": 0.35, "window": 2, "hold": 4}
# decoding gates read the probe at the decoded position itself (no ``initial``)
TRUTH_DECODING_GATE: dict[str, Any] = {"probe": "truth", "below": 0.35, "window": 1, "hold": 2}
SYCOPHANCY_GATE: dict[str, Any] = {"probe": "sycophancy", "above": 0.5, "window": 2, "hold": 4}
SYCOPHANCY_DECODING_GATE: dict[str, Any] = {"probe": "sycophancy", "above": 0.5}


@dataclass(frozen=True)
class Config:
    name: str
    extra: dict[str, Any] = field(default_factory=dict)
    # request fields for the neutral-text perplexity (None: ``extra``); DoLa's MC scores are not
    # log-probabilities, so its perplexity is measured under the generation config
    ppl_extra: dict[str, Any] | None = None

    @property
    def ppl_fields(self) -> dict[str, Any]:
        return self.extra if self.ppl_extra is None else self.ppl_extra


def add_op(direction: str, strength: float, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"direction": direction, "op": "add", "strength": strength}
    if gate:
        op["gate"] = gate
    return op


def truth_op(strength: float, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    return add_op("truth", strength, gate)


def truthfulness() -> list[Config]:
    """TruthfulQA MC by log-likelihood: no steering, truth steering at a few strengths, DoLa, both."""
    out = [Config("none")]
    out += [Config(f"truth +{s:g}", {"steering": [truth_op(s)]}) for s in TRUTH_STRENGTHS]
    both = [truth_op(TRUTH_STRENGTHS[1])]
    out += [Config("DoLa", {"decoding": DOLA_MC}, {"decoding": DOLA}),
            Config(f"truth +{TRUTH_STRENGTHS[1]:g} + DoLa", {"steering": both, "decoding": DOLA_MC},
                   {"steering": both, "decoding": DOLA})]
    return out


def gating() -> list[Config]:
    """Generation: gated vs constant vs no steering (the gate acts on generated tokens only), and
    DoLa on every step vs DoLa gated by the truth probe at the decoded position."""
    s = TRUTH_STRENGTHS[-1]
    return [Config("none"), Config(f"truth +{s:g} constant", {"steering": [truth_op(s)]}),
            Config(f"truth +{s:g} gated", {"steering": [truth_op(s, TRUTH_GATE)]}),
            Config("DoLa", {"decoding": DOLA}),
            Config("DoLa gated", {"decoding": {**DOLA, "gate": TRUTH_DECODING_GATE}})]


def sycophancy_gating() -> list[Config]:
    """The A/B letter as generated (greedy): what gates can change. A steering gate first reads a
    score at the first generated token, so it cannot touch the letter (the first token) and must
    equal none there; a decoding gate reads the probe at the decoded position and can."""
    return [Config("none"),
            Config("sycophancy -2 constant", {"steering": [add_op("sycophancy", -2.0)]}),
            Config("sycophancy -2 gated", {"steering": [add_op("sycophancy", -2.0, SYCOPHANCY_GATE)]}),
            Config("DoLa", {"decoding": DOLA}),
            Config("DoLa gated (sycophancy probe)", {"decoding": {**DOLA, "gate": SYCOPHANCY_DECODING_GATE}})]


def sycophancy() -> list[Config]:
    return [Config("none"),
            Config("sycophancy -1", {"steering": [{"direction": "sycophancy", "op": "add", "strength": -1.0}]}),
            Config("sycophancy -2", {"steering": [{"direction": "sycophancy", "op": "add", "strength": -2.0}]}),
            Config("sycophancy ablate", {"steering": [{"direction": "sycophancy", "op": "ablate"}]})]
