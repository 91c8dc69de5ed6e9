"""The worker's per-step plan: one description of the batch that every truthsteer consumer reads.

Once per step (from the plugin's ``_model_forward`` wrapper, before the forward pass),
:meth:`StepPlanner.plan` turns the runner's batch into a :class:`StepPlan`: per request, in
batch-row order, its token rows (``query_start_loc``), the sequence position of its first row,
its prompt/generated split, whether it samples a token this step, and its :class:`RequestState`.
The steering tables (:mod:`~steering.vllm.runtime`), the probe read-out
(:mod:`~steering.vllm.probe_readout`), the stash of contrastive decoding
(:mod:`~steering.decoding.stash`, read by the logits processor) and activation capture
(:mod:`~steering.vllm.capture`) all read this plan; none of them calls another.

Invariants:

* A request's ``extra_args`` are parsed once, by :func:`steering.request.from_wire`, when it
  first appears, and checked once against this worker (steering slots, probe columns of gates);
  the resulting :class:`RequestState` is cached here and nowhere else. Requests that left the
  batch are forgotten here, in one place, before new ones are admitted (which frees their inline
  vector rows for the newcomers).
* The per-row decoding configs (:attr:`StepPlan.contrast`) and prompt rows are computed once.
* Probe gates are decided in one place, :meth:`StepPlan.decide`, after the pass from the scores
  of the sampling rows: steering gates for the next step, decoding gates for this step (a closed
  gate leaves its row out of ``contrast``); the flag bits (``STEERED`` known before the pass,
  ``CONTRASTED`` after) are what the read-out sends with the sampling row.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from steering.decoding.spec import ResolvedDecoding
from steering.errors import SpecError
from steering.request import DECODING, STEERING, RequestContract, from_wire
from steering.vllm.gates import GateState
from steering.vllm.probe_channel import CONTRASTED, STEERED

if TYPE_CHECKING:
    from steering.vllm.runtime import SlotPlan

log = logging.getLogger(__name__)

POS_ALL, POS_PROMPT, POS_GENERATED = 0, 1, 2  # a steering op's positions, as slot entries hold them
POS_CODES = {"all": POS_ALL, "prompt": POS_PROMPT, "generated": POS_GENERATED}
_EMPTY = RequestContract()


class SlotResolver(Protocol):
    """Who turns a request's steering into slot entries (the steering runtime's tables)."""

    def admit(self, req_id: str, contract: RequestContract) -> SlotPlan:
        """Slot entries of the request's steering (raises SpecError & co. when they do not fit)."""

    def release(self, req_id: str) -> None:
        """Free what :meth:`admit` held for the request (inline vector rows)."""


@dataclass
class RequestState:
    """One request's worker-side state while it is in the batch (created at its first step)."""

    contract: RequestContract
    slots: SlotPlan | None = None  # steering slot entries by layer; None: unsteered on this worker
    steer_gates: tuple[GateState, ...] = ()  # indexed by the slot entries' ``gate``
    steer_columns: tuple[int, ...] = ()  # probe column of each steering gate
    decoding: ResolvedDecoding | None = None  # accepted on this worker (None: plain decoding)
    decode_gate: GateState | None = None
    decode_column: int = -1
    gated: bool = False  # a probe gate reads this request's sampling rows (set once admitted)


@dataclass(slots=True)
class RowSpan:
    """One request of the step: token rows ``start .. end - 1`` hold sequence positions
    ``position ..``; those below ``num_prompt`` are prompt tokens. Read-only once planned."""

    index: int  # batch row
    req_id: str
    start: int
    end: int
    position: int  # sequence position of token row ``start`` (tokens computed before this step)
    num_prompt: int
    state: RequestState
    scheduled: bool = field(init=False)  # any token row this step
    split: int = field(init=False)  # first token row of generated positions (``end``: all prompt rows)
    samples: bool = field(init=False)  # the last row samples a token (the prompt is complete after this step)

    def __post_init__(self) -> None:
        n = self.end - self.start
        self.scheduled = n > 0
        self.split = self.start + min(max(self.num_prompt - self.position, 0), n)
        self.samples = n > 0 and self.position + n >= self.num_prompt

    @property
    def prompt_logprob_rows(self) -> int:
        """Prompt positions whose logprobs vLLM computes this step (``GPUModelRunner.
        _get_prompt_logprobs_dict``: the last prompt position predicts a generated token)."""
        return min(self.end - self.start, self.num_prompt - self.position - 1)

    def rows_for(self, positions: int) -> tuple[int, int]:
        """Token rows ``[lo, hi)`` that a steering op on ``positions`` (``POS_*``) covers."""
        if positions == POS_ALL:
            return self.start, self.end
        return (self.start, self.split) if positions == POS_PROMPT else (self.split, self.end)


@dataclass
class StepPlan:
    """This step's batch as every consumer reads it (see the module docstring)."""

    spans: tuple[RowSpan, ...]  # every request of the batch, in batch-row order
    total_tokens: int
    echo: frozenset[str] = frozenset()  # requests still owed prompt logprobs (echo scoring)
    rejected: Mapping[str, int] = field(default_factory=dict)  # sections rejected at admission this step
    contrast: list[ResolvedDecoding | None] = field(default_factory=list)  # per batch row (logits processor)
    flags: dict[str, int] = field(default_factory=dict)  # gated sampling rows: STEERED | CONTRASTED bits

    def decide(self, sampled: Mapping[str, np.ndarray]) -> None:
        """After the pass, before sampling: fold the calibrated scores ``[P]`` of the gated
        requests' sampling rows into their gates. Steering gates decide the next step; decoding
        gates this one (a closed gate, or a missing score, leaves the row plain)."""
        for span in self.spans:
            st, rid = span.state, span.req_id
            if not (st.gated and span.samples):
                continue
            scores = sampled.get(rid)
            for gate, col in zip(st.steer_gates, st.steer_columns, strict=True):
                if scores is not None:
                    gate.update(float(scores[col]))
            if st.decode_gate is None or self.contrast[span.index] is None:
                continue
            if scores is None:  # never read: decode plainly rather than guess
                log.warning("truthsteer: no probe score for the decoding gate of %s; step left plain", rid)
                self.contrast[span.index] = None
                continue
            st.decode_gate.update(float(scores[st.decode_column]))
            if st.decode_gate.open:
                self.flags[rid] = self.flags.get(rid, 0) | CONTRASTED
            else:
                self.contrast[span.index] = None


class StepPlanner:
    """Per-request states (parsed once, forgotten once) and the plan of each step."""

    def __init__(self, num_layers: int, steering: SlotResolver | None = None,
                 probe_column: Callable[[str], int | None] | None = None, decoding: bool = False) -> None:
        """``probe_column``: the probe read-out's column of a probe name (``None``: not loaded);
        without it gated decoding is refused. ``decoding``: contrastive decoding is installed
        (set by :func:`steering.decoding.logits_processor.install`); otherwise ``decoding`` is ignored."""
        self.num_layers = num_layers
        self.steering = steering
        self.probe_column = probe_column
        self.decoding = decoding
        self.requests: dict[str, RequestState] = {}

    def plan(self, runner: Any) -> StepPlan:
        """This step's plan from the runner's batch (``input_batch``, ``query_start_loc``,
        ``requests``, ``num_prompt_logprobs``)."""
        ib = runner.input_batch
        n = int(ib.num_reqs)
        req_ids: Sequence[str] = ib.req_ids[:n]
        self._forget(set(req_ids))
        rejected: Counter[str] = Counter()
        spans: list[RowSpan] = []
        qsl = runner.query_start_loc.np[: n + 1].tolist() if n else [0]
        computed, prompt = ib.num_computed_tokens_cpu[:n].tolist(), ib.num_prompt_tokens[:n].tolist()
        for i, rid in enumerate(req_ids):
            state = self.requests.get(rid)
            if state is None:
                state = self.requests[rid] = self._admit(rid, runner.requests.get(rid), rejected)
            spans.append(RowSpan(i, rid, qsl[i], qsl[i + 1], computed[i], prompt[i], state))
        echo = frozenset(getattr(runner, "num_prompt_logprobs", None) or ())
        contrast = [s.state.decoding if s.samples else None for s in spans]
        flags = {s.req_id: STEERED if s.state.steer_gates and _steers_last_row(s) else 0
                 for s in spans if s.state.gated and s.samples}
        return StepPlan(tuple(spans), int(qsl[n]), echo, dict(rejected), contrast, flags)

    def _forget(self, live: set[str]) -> None:
        for rid in self.requests.keys() - live if self.requests else ():
            del self.requests[rid]
            if self.steering is not None:
                self.steering.release(rid)

    def _admit(self, rid: str, request: Any, rejected: Counter[str]) -> RequestState:
        params = getattr(request, "sampling_params", None)
        contract = from_wire(getattr(params, "extra_args", None), self.num_layers) or _EMPTY
        state = RequestState(contract)
        for section, why in contract.errors:
            self._reject(rid, section, why, rejected)
        if contract.steering and self.steering is not None:
            try:
                state.slots = self.steering.admit(rid, contract) or None
                gates = [op.gate for op in contract.steering if op.gate is not None] if state.slots else []
                state.steer_columns = tuple(self._column(g.probe) for g in gates)
                state.steer_gates = tuple(GateState(g) for g in gates)
            except (SpecError, KeyError, TypeError, ValueError) as e:
                # Validated at the point of entry; a raw-vLLM caller may still send junk. Never
                # let it take the engine down: run the request unsteered and count it.
                state.slots, state.steer_gates, state.steer_columns = None, (), ()
                self.steering.release(rid)
                self._reject(rid, STEERING, str(e), rejected)
        if self.decoding and contract.decoding is not None:
            self._accept_decoding(rid, state, contract.decoding, rejected)
        state.gated = bool(state.steer_gates) or state.decode_gate is not None
        return state

    def _accept_decoding(self, rid: str, state: RequestState, cfg: ResolvedDecoding, rejected: Counter[str]) -> None:
        if cfg.gate is not None:
            col = self.probe_column(cfg.gate.probe) if self.probe_column is not None else None
            if col is None:
                self._reject(rid, DECODING, f"probe {cfg.gate.probe!r} of the decoding gate is not loaded", rejected)
                return
            state.decode_gate, state.decode_column = GateState(cfg.gate), col
        state.decoding = cfg

    def _column(self, probe: str) -> int:
        col = self.probe_column(probe) if self.probe_column is not None else None
        if col is None:
            raise SpecError(f"probe {probe!r} is not loaded on this worker")
        return col

    @staticmethod
    def _reject(rid: str, section: str, why: str, rejected: Counter[str]) -> None:
        rejected[section] += 1
        log.warning("truthsteer: ignoring invalid %s of request %s: %s", section, rid, why)


def _steers_last_row(span: RowSpan) -> bool:
    """Whether steering acts on the span's last (sampling) row this step, gates as they stand."""
    st = span.state
    for entries in (st.slots or {}).values():
        for ent in entries:
            if ent.gate >= 0 and not st.steer_gates[ent.gate].open:
                continue
            lo, hi = span.rows_for(ent.positions)
            if lo < hi == span.end:
                return True
    return False
