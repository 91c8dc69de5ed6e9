"""Selective answering (abstention on a probe summary) and intervention counts per choice."""

from __future__ import annotations

from dataclasses import dataclass

from server.responses import Interventions, TokenFlags
from steering.decoding.spec import ResolvedDecoding
from steering.spec import ResolvedOp
from steering.vllm.probe_channel import CONTRASTED, STEERED


@dataclass(frozen=True)
class AbstainDecision:
    abstained: bool
    score: float | None


def decide_abstain(tokens: list[float | None], below: float, reduce: str) -> AbstainDecision:
    """Abstain when the reduced probe score of the generated tokens is below ``below``.

    No scored token (e.g. zero tokens generated) means no evidence: the answer stands.
    """
    vals = [t for t in tokens if t is not None]
    if not vals:
        return AbstainDecision(False, None)
    score = sum(vals) / len(vals) if reduce == "mean" else min(vals) if reduce == "min" else vals[-1]
    return AbstainDecision(score < below, score)


def flagged(flags: dict[int, int] | None, n: int, bit: int) -> int:
    """How many of the ``n`` generated tokens carry the worker's flag ``bit``."""
    return sum(1 for k in range(n) if (flags or {}).get(k, 0) & bit)


def steered_tokens(ops: list[ResolvedOp], n: int, flags: dict[int, int] | None) -> int:
    """How many of the ``n`` generated tokens were produced by a steered forward pass.

    Token ``k`` is sampled at the position ``n_prompt - 1 + k``: a prompt position for ``k == 0``,
    a generated one after. Gated requests report per-token flags from the worker (``flags`` by
    token index, ``STEERED`` bit); for ungated ones the count follows from the operations' ``positions``.
    """
    if not ops or n == 0:
        return 0
    if any(op.gate is not None for op in ops):
        return flagged(flags, n, STEERED)
    kinds = {op.positions for op in ops}
    if "all" in kinds or {"prompt", "generated"} <= kinds:
        return n
    if "generated" in kinds:
        return n - 1
    return 1  # prompt only: the first token is sampled from the last prompt position


def interventions(ops: list[ResolvedOp], decoding: ResolvedDecoding | None, n: int,
                  flags: dict[int, int] | None) -> Interventions:
    """``contrasted_tokens`` is ``None`` (unknown here) when an entropy gate decides per step (it
    runs in the sampler, after the flags are sent); with a probe gate alone the worker's
    ``CONTRASTED`` flags count them."""
    contrasted: int | None = 0
    if decoding is not None:
        if decoding.entropy_threshold is not None:
            contrasted = None
        elif decoding.gate is not None:
            contrasted = flagged(flags, n, CONTRASTED)
        else:
            contrasted = n
    return Interventions(steered_tokens=steered_tokens(ops, n, flags), contrasted_tokens=contrasted)


def _steered_at(ops: list[ResolvedOp], k: int, flags: dict[int, int]) -> bool:
    if not ops:
        return False
    if any(op.gate is not None for op in ops):
        return bool(flags.get(k, 0) & STEERED)
    kinds = {op.positions for op in ops}
    return "all" in kinds or ("generated" in kinds and k >= 1) or ("prompt" in kinds and k == 0)


def _contrasted_at(decoding: ResolvedDecoding | None, k: int, flags: dict[int, int]) -> bool | None:
    if decoding is None:
        return False
    if decoding.entropy_threshold is not None:
        return None
    if decoding.gate is not None:
        return bool(flags.get(k, 0) & CONTRASTED)
    return True


def token_flags(ops: list[ResolvedOp], decoding: ResolvedDecoding | None, start: int, count: int,
                flags: dict[int, int] | None) -> TokenFlags:
    """Flags of the choice's generated tokens ``start .. start + count - 1`` (same rules as
    :func:`interventions`; ``flags`` by token index within the choice).

    ``steered[k]``: the token came from a steered forward pass; ``contrasted[k]``: it was sampled
    from the contrasted distribution (``None`` when an entropy gate decides, in the sampler).
    """
    f = flags or {}
    ks = range(start, start + count)
    return TokenFlags(steered=[_steered_at(ops, k, f) for k in ks],
                      contrasted=[_contrasted_at(decoding, k, f) for k in ks])
