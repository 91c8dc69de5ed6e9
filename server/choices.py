"""One choice of a completion: the pieces it accumulated and, once finished, what it adds.

:class:`ChoiceState` accumulates a choice's pieces (deltas) as they arrive. When the choice
finishes, :func:`decide` computes everything truthsteer adds to it exactly once, as a
:class:`ChoiceOutcome`: the probe summaries, the intervention counts, the abstention decision and
with it the text and finish reason the client sees. Both response paths (collected and streamed)
format the outcome (``server/shapes.py``) and hand the same outcome to the metrics
(``Metrics.record_choice``); nothing here formats or records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.probing import ProbeInfo, summarize
from server.responses import AbstainResult, Interventions, ProbeSummary
from server.selective import decide_abstain, interventions
from server.serving import Piece, Plan
from steering.decoding.spec import ResolvedDecoding


@dataclass
class ChoiceState:
    """Everything one choice accumulated so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] | None = None
    finish_reason: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    flags: dict[int, int] = field(default_factory=dict)  # token index -> STEERED | CONTRASTED
    prompt_logprobs: list[Any] | None = None

    def add(self, p: Piece) -> None:
        self.prompt_logprobs = p.prompt_logprobs or self.prompt_logprobs
        self.flags.update({len(self.token_ids) + k: v for k, v in (p.flags or {}).items()})
        self.text += p.text
        self.token_ids += p.token_ids
        if p.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(p.logprobs)
        self.finish_reason = p.finish_reason or self.finish_reason
        self.prompt_token_ids = p.prompt_token_ids or self.prompt_token_ids
        for name, vals in (p.probe_tokens or {}).items():
            self.scores.setdefault(name, []).extend(vals)


@dataclass(frozen=True)
class ChoiceOutcome:
    """What a finished choice adds to its response, decided once.

    ``text`` and ``finish_reason`` are what the client sees (the abstention message and
    ``"abstained"`` when the choice abstained); ``directions`` and ``contrast_method`` label the
    intervention counts in the metrics.
    """

    tokens: int
    text: str
    finish_reason: str | None
    probe_scores: dict[str, ProbeSummary] | None = None
    interventions: Interventions | None = None
    abstain: AbstainResult | None = None
    directions: tuple[str, ...] = ()
    contrast_method: str | None = None


def active_decoding(plan: Plan) -> ResolvedDecoding | None:
    """The plan's contrastive decoding, ``None`` when it has none or it is switched off."""
    return plan.decoding if plan.decoding is not None and plan.decoding.active else None


def marks_tokens(plan: Plan) -> bool:
    """Whether the plan's choices carry intervention counts (and stream chunks ``token_flags``)."""
    return bool(plan.ops) or active_decoding(plan) is not None


def decide(probes: Mapping[str, ProbeInfo], plan: Plan, st: ChoiceState, shown: str) -> ChoiceOutcome:
    """The outcome of a finished choice whose text, as its response would show it, is ``shown``."""
    dec = active_decoding(plan)
    summaries = {name: summarize(st.scores.get(name, []), probes[name]) for name in plan.probes} or None
    iv = interventions(plan.ops, dec, len(st.token_ids), st.flags) if marks_tokens(plan) else None
    text, finish_reason, abstain = shown, st.finish_reason, None
    ab = plan.abstain
    if ab is not None:
        decision = decide_abstain(st.scores.get(ab.probe, []), ab.below, ab.reduce)
        abstain = AbstainResult(probe=ab.probe, reduce=ab.reduce, score=decision.score, below=ab.below,
                                abstained=decision.abstained,
                                original=shown if decision.abstained and ab.return_original else None)
        if decision.abstained:
            text, finish_reason = ab.message, "abstained"
    return ChoiceOutcome(len(st.token_ids), text, finish_reason, summaries, iv, abstain,
                         tuple(sorted({op.direction for op in plan.ops})), dec.method if dec is not None else None)
