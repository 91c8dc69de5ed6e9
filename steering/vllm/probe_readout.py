"""Worker-side probe read-out: linear probes evaluated inside the forward pass, rows sent per step.

Each layer that carries probes gets fixed-shape buffers (``_ts_pw [P, H]``, ``_ts_pb [P]``,
``_ts_pout [max_tokens, P]``, ``_ts_pactive``) and :func:`~steering.vllm.custom_op.probe_hook`,
registered after the steering hook so that it reads the stream as the next layer sees it. The op
writes the logits of every token of the step; after the pass, :meth:`ProbeReadout.collect` picks
the rows that matter:

* the position that samples a token (the last scheduled position of a request whose prompt is
  complete after this step): its score belongs to the generated token it produces;
* with ``prompt: true`` (used by ``/v1/probes/score``), every computed prompt position as well.

Probe ``p`` of bundle ``b``: ``score = sigmoid(a * (w . h + bias) + c)``; the Platt pair ``(a, c)``
is folded into ``w`` and the bias, so the op is one ``addmm`` per probe layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from steering.bundle import DirectionBundle
from steering.spec import EXTRA_ARGS_KEY
from steering.vllm.custom_op import probe_hook
from steering.vllm.probe_channel import StepMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pending:
    req_id: str
    probe_id: str | None  # None: read for a gate only, nothing sent
    positions: list[int]  # absolute sequence positions of ``rows``
    rows: np.ndarray  # token rows of this step
    flags: int | None  # watched requests' sampling row: StepFlags bits known before the pass


@dataclass(frozen=True)
class ProbeRequest:
    probe_id: str
    prompt: bool  # also score prompt positions


def folded_probe(b: DirectionBundle) -> tuple[torch.Tensor, float]:
    """``(w', bias')`` with ``sigmoid(w' . h + bias')`` equal to the bundle's calibrated score."""
    assert b.meta.probe is not None and b.probe_weight is not None
    cal = b.meta.probe.calibration
    return b.probe_weight.float() * cal.a, cal.a * b.meta.probe.bias + cal.b


def parse_probe_request(extra_args: Any) -> ProbeRequest | None:
    extra = extra_args.get(EXTRA_ARGS_KEY) if isinstance(extra_args, dict) else None
    raw = extra.get("probes") if isinstance(extra, dict) else None
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        return None
    return ProbeRequest(raw["id"], bool(raw.get("prompt", False)))


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
        self._requests: dict[str, ProbeRequest | None] = {}
        self._pending: list[_Pending] = []
        self._was_active = False

    def __bool__(self) -> bool:
        return bool(self.names)

    def column(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    def _request(self, req_id: str, state: Any) -> ProbeRequest | None:
        if req_id not in self._requests:
            params = getattr(state, "sampling_params", None)
            self._requests[req_id] = parse_probe_request(getattr(params, "extra_args", None))
        return self._requests[req_id]

    def prepare(self, req_ids: list[str], states: Any, qsl: np.ndarray, num_prompt: np.ndarray,
                num_computed: np.ndarray, watch: Mapping[str, int] | None = None) -> None:
        """Decide which token rows of this step to read, and switch the op on or off.

        ``watch``: requests with probe gates (their sampling row is read even when they did not
        ask for scores), with the flag bits of that row known before the pass (``STEERED``).
        """
        watch = watch or {}
        pending = []
        for i, rid in enumerate(req_ids):
            pr = self._request(rid, states.get(rid))
            if pr is None and rid not in watch:
                continue
            s, e = int(qsl[i]), int(qsl[i + 1])
            if e <= s:
                continue
            first = int(num_computed[i])  # sequence position of token row s
            n_prompt = int(num_prompt[i])
            done = first + (e - s)  # tokens computed after this step
            rows: list[int] = []
            if pr is not None and pr.prompt:
                rows.extend(range(s, s + max(0, min(e - s, n_prompt - first))))
            samples = done >= n_prompt
            if samples and (not rows or rows[-1] != e - 1):
                rows.append(e - 1)  # the position that samples the next token
            if rows:
                idx = np.asarray(rows, dtype=np.int64)
                flags = watch.get(rid) if samples else None
                pending.append(_Pending(rid, pr.probe_id if pr else None, (idx - s + first).tolist(), idx, flags))
        if len(self._requests) > len(req_ids):
            live = set(req_ids)
            for rid in [r for r in self._requests if r not in live]:
                del self._requests[rid]
        self._pending = pending
        active = bool(pending)
        if active != self._was_active:
            for a in self.actives.values():
                a.fill_(int(active))
            self._was_active = active

    def collect(self, decide: Callable[[dict[str, np.ndarray]], Mapping[str, int]] | None = None
                ) -> tuple[StepMessage | None, dict[str, np.ndarray]]:
        """After the forward pass: the rows chosen in :meth:`prepare`.

        Returns the message for the API process (requests with a probe id) and, per watched
        request, the calibrated scores ``[P]`` of its sampling row. ``decide`` gets those scores
        before the message is built and returns flag bits decided from them (``CONTRASTED``),
        which are added to the rows' flags.
        """
        if not self._pending:
            if decide is not None:
                decide({})  # gates with no score this step stay closed
            return None, {}
        index = torch.from_numpy(np.concatenate([p.rows for p in self._pending]))
        per_layer = {
            layer: out.index_select(0, index.to(out.device)).cpu().numpy() for layer, out in self.outs.items()
        }
        table = np.stack([per_layer[layer][:, j] for layer, j in self.columns], axis=1)  # [rows, P] logits
        sampled: dict[str, np.ndarray] = {}
        blocks = []
        start = 0
        for p in self._pending:
            block = table[start : start + len(p.rows)]
            start += len(p.rows)
            blocks.append(block)
            if p.flags is not None:
                sampled[p.req_id] = 1.0 / (1.0 + np.exp(-block[-1].astype(np.float64)))
        decided = decide(sampled) if decide is not None else {}
        msg_rows = []
        for p, block in zip(self._pending, blocks, strict=True):
            if p.probe_id is not None:
                flags = [-1] * len(p.positions)
                if p.flags is not None:
                    flags[-1] = p.flags | decided.get(p.req_id, 0)
                msg_rows.append((p.probe_id, p.positions, block.tolist(), flags))
        self._pending = []
        return (StepMessage(names=list(self.names), rows=msg_rows) if msg_rows else None), sampled
