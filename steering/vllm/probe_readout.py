"""Worker-side probe read-out: linear probes evaluated inside the forward pass, rows sent per step.

Each layer that carries probes gets fixed-shape buffers (``_ts_pw [P, H]``, ``_ts_pb [P]``,
``_ts_pout [max_tokens, P]``, ``_ts_pactive``) and :func:`~steering.vllm.custom_op.probe_hook`,
registered after the steering hook so that it reads the stream as the next layer sees it. The op
writes the logits of every token of the step; :meth:`ProbeReadout.prepare` picks, from the step's
:class:`~steering.vllm.step_plan.StepPlan`, the rows that matter, and after the pass
:meth:`ProbeReadout.read` gathers them:

* the position that samples a token (the last scheduled position of a request whose prompt is
  complete after this step): its score belongs to the generated token it produces; read for
  requests that asked for probes and for requests with probe gates (their scores go to the plan's
  gates, :meth:`~steering.vllm.step_plan.StepPlan.decide`);
* with ``prompt: true`` (used by ``/v1/probes/score``), every computed prompt position as well.

:meth:`ProbeReadout.message` then builds the step's message for the API process, with the plan's
flag bits on gated sampling rows.

Probe ``p`` of bundle ``b``: ``score = sigmoid(a * (w . h + bias) + c)``; the Platt pair ``(a, c)``
is folded into ``w`` and the bias, so the op is one ``addmm`` per probe layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from steering.bundle import DirectionBundle
from steering.vllm.custom_op import probe_hook
from steering.vllm.probe_channel import StepMessage
from steering.vllm.step_plan import StepPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pending:
    req_id: str
    probe_id: str | None  # None: read for a gate only, nothing sent
    positions: list[int]  # absolute sequence positions of ``rows``
    rows: np.ndarray  # token rows of this step
    gated: bool  # the last row is a gated request's sampling row: its scores feed the gates, its flags are sent


@dataclass(frozen=True)
class StepScores:
    """What :meth:`ProbeReadout.read` gathered: logits ``[rows, P]`` per pending request, and the
    calibrated scores ``[P]`` of each gated request's sampling row."""

    blocks: list[np.ndarray] = field(default_factory=list)
    sampled: dict[str, np.ndarray] = field(default_factory=dict)


def folded_probe(b: DirectionBundle) -> tuple[torch.Tensor, float]:
    """``(w', bias')`` with ``sigmoid(w' . h + bias')`` equal to the bundle's calibrated score."""
    assert b.meta.probe is not None and b.probe_weight is not None
    cal = b.meta.probe.calibration
    return b.probe_weight.float() * cal.a, cal.a * b.meta.probe.bias + cal.b


class ProbeReadout:
    def __init__(self, layers: nn.ModuleList, bundles: Iterable[DirectionBundle], max_tokens: int,
                 device: torch.device) -> None:
        by_layer: dict[int, list[DirectionBundle]] = {}
        for b in bundles:
            if b.meta.probe is not None and b.probe_weight is not None:
                by_layer.setdefault(b.meta.probe.layer, []).append(b)
        self.names: list[str] = []
        self.columns: list[tuple[int, int]] = []  # global probe index -> (layer, column)
        self.outs: dict[int, torch.Tensor] = {}
        self.actives: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        for layer, group in sorted(by_layer.items()):
            module = layers[layer]
            folded = [folded_probe(b) for b in group]
            w = torch.stack([f[0] for f in folded]).to(device)
            bias = torch.tensor([f[1] for f in folded], dtype=torch.float32, device=device)
            out = torch.zeros(max_tokens, len(group), dtype=torch.float32, device=device)
            active = torch.zeros(1, dtype=torch.int32)
            for name, t in (("pw", w), ("pb", bias), ("pout", out), ("pactive", active)):
                module.register_buffer(f"_ts_{name}", t, persistent=False)
            self._handles.append(module.register_forward_hook(probe_hook))
            self.outs[layer], self.actives[layer] = out, active
            for j, b in enumerate(group):
                self.names.append(b.name)
                self.columns.append((layer, j))
        self._pending: list[_Pending] = []
        self._was_active = False

    def __bool__(self) -> bool:
        return bool(self.names)

    def column(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    def prepare(self, plan: StepPlan) -> None:
        """Decide which token rows of this step to read, and switch the op on or off."""
        pending = []
        for span in plan.spans:
            pr = span.state.contract.probes
            if (pr is None and not span.state.gated) or not span.scheduled:
                continue
            s, e, first = span.start, span.end, span.position
            rows: list[int] = []
            if pr is not None and pr.prompt:
                rows.extend(range(s, s + max(0, min(e - s, span.num_prompt - first))))
            if span.samples and (not rows or rows[-1] != e - 1):
                rows.append(e - 1)  # the position that samples the next token
            if rows:
                idx = np.asarray(rows, dtype=np.int64)
                gated = span.state.gated and span.samples
                pending.append(_Pending(span.req_id, pr.probe_id if pr else None, (idx - s + first).tolist(), idx,
                                        gated))
        self._pending = pending
        active = bool(pending)
        if active != self._was_active:
            for a in self.actives.values():
                a.fill_(int(active))
            self._was_active = active

    def read(self) -> StepScores:
        """After the forward pass: the logits of the rows chosen in :meth:`prepare` (each read once)."""
        if not self._pending:
            return StepScores()
        index = torch.from_numpy(np.concatenate([p.rows for p in self._pending]))
        per_layer = {
            layer: out.index_select(0, index.to(out.device)).cpu().numpy() for layer, out in self.outs.items()
        }
        table = np.stack([per_layer[layer][:, j] for layer, j in self.columns], axis=1)  # [rows, P] logits
        out = StepScores()
        start = 0
        for p in self._pending:
            block = table[start : start + len(p.rows)]
            start += len(p.rows)
            out.blocks.append(block)
            if p.gated:
                out.sampled[p.req_id] = 1.0 / (1.0 + np.exp(-block[-1].astype(np.float64)))
        return out

    def message(self, scores: StepScores, flags: Mapping[str, int]) -> StepMessage | None:
        """The step's message for the API process (rows of requests with a probe id); a gated
        sampling row carries its ``flags`` bits (``STEERED`` | ``CONTRASTED``), other rows -1."""
        msg_rows = []
        for p, block in zip(self._pending, scores.blocks, strict=True):
            if p.probe_id is not None:
                row_flags = [-1] * len(p.positions)
                if p.gated:
                    row_flags[-1] = flags.get(p.req_id, 0)
                msg_rows.append((p.probe_id, p.positions, block.tolist(), row_flags))
        self._pending = []
        return StepMessage(names=list(self.names), rows=msg_rows) if msg_rows else None

    def collect(self, flags: Mapping[str, int] | None = None) -> tuple[StepMessage | None, dict[str, np.ndarray]]:
        """:meth:`read` then :meth:`message`: the message and the gated sampling rows' scores."""
        scores = self.read()
        return self.message(scores, flags or {}), scores.sampled
