"""Worker-side activation capture (``POST /v1/activations``): residual-stream rows of chosen prompt
positions at chosen layers, read in the engine's own compiled forward pass.

Decoder layer ``k``'s output stream (``hidden + residual``, after any steering on that layer: HF's
``hidden_states[k + 1]``, the convention of steering and probes) is copied by the
``truthsteer::stash`` op into a fixed buffer ``[max_rows, H]`` registered on the layer, at the token
rows named by one shared row table. The hooks are installed with the other truthsteer hooks,
before the first (compiling) forward pass; a layer nobody captures this step costs one skipped op
call on CPU.

Per step, :meth:`ActivationCapture.prepare` finds, in the step's
:class:`~steering.vllm.step_plan.StepPlan`, the requests whose contract asks for a capture
(:class:`~steering.request.CaptureRequest`: id, layers, absolute prompt positions), maps the
positions scheduled this step to token rows, and switches on the layers they ask for; after the pass, :meth:`collect` files the rows under the request's capture id, position
and layer (chunked prefills arrive over several steps). The API process takes a finished
request's rows with the worker-extension RPC ``truthsteer_take_activations``.

Invariants: rows past this step's are 0, a valid token index (accelerators copy every row, so
that a captured CUDA graph stays valid); at most ``max_rows`` rows per step (the API admits at most that many positions in
flight); rows are filed by the id the API chose, never by batch order; a request's rows are kept
until taken, and at most ``MAX_PENDING`` requests' rows are kept at all (oldest dropped).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from steering.request import CaptureRequest
from steering.vllm.custom_op import all_slots_of
from steering.vllm.step_plan import StepPlan

log = logging.getLogger(__name__)
MAX_PENDING = 256


def capture_hook(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook after the steering and probe hooks: copy the chosen rows of the stream."""
    if isinstance(output, tuple):
        hidden, residual = output[0], output[1]
    else:
        hidden, residual = output, None
    torch.ops.truthsteer.stash(
        hidden, residual, module._ts_crows, module._ts_cout, module._ts_cactive, all_slots_of(module)
    )


class ActivationCapture:
    def __init__(self, layers: nn.ModuleList, hidden_size: int, max_rows: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.num_layers = len(layers)
        self.max_rows = max_rows
        self.rows = torch.zeros(max_rows, dtype=torch.int64, device=device)
        self.outs: dict[int, torch.Tensor] = {}
        self.active: dict[int, torch.Tensor] = {}
        for i, module in enumerate(layers):
            if type(module).__name__ == "PPMissingLayer":
                continue
            self.outs[i] = torch.zeros(max_rows, hidden_size, dtype=dtype, device=device)
            self.active[i] = torch.zeros(1, dtype=torch.int32)
            module.register_buffer("_ts_crows", self.rows, persistent=False)
            module.register_buffer("_ts_cout", self.outs[i], persistent=False)
            module.register_buffer("_ts_cactive", self.active[i], persistent=False)
            module.register_forward_hook(capture_hook)
        self._rows_np = np.zeros(max_rows, dtype=np.int64)
        self._step: list[tuple[CaptureRequest, int, int]] = []  # (request, buffer row, position)
        self._on: set[int] = set()
        self._prev_n = 0
        self._results: OrderedDict[str, dict[int, dict[int, np.ndarray]]] = OrderedDict()
        self.dropped = 0

    def prepare(self, plan: StepPlan) -> None:
        """Point the row table at this step's captured positions and switch their layers on."""
        self._step = []
        wanted: set[int] = set()
        n = 0
        for span in plan.spans:
            spec = span.state.contract.capture
            if spec is None:
                continue
            for t in range(span.start, span.end):
                pos = span.position + t - span.start
                if pos not in spec.positions:
                    continue
                if n >= self.max_rows:
                    self.dropped += 1
                    continue
                self._rows_np[n] = t
                self._step.append((spec, n, pos))
                n += 1
            wanted.update(spec.layers)
        if n:
            self.rows[:n].copy_(torch.from_numpy(self._rows_np[:n]))
        if self._prev_n > n:  # accelerators copy every row: keep the unused ones valid token indices
            self.rows[n:self._prev_n].zero_()
        self._prev_n = n
        wanted = {k for k in wanted if k in self.outs} if n else set()
        for k in wanted | self._on:
            self.active[k].fill_(n if k in wanted else 0)
        self._on = wanted

    def collect(self) -> None:
        """After the pass: file this step's rows under their requests' capture ids."""
        if not self._step:
            return
        n = len(self._step)
        data = {k: self.outs[k][:n].float().cpu().numpy() for k in self._on}
        for spec, row, pos in self._step:
            per_layer = self._results.setdefault(spec.id, {})
            for k in spec.layers:
                if k in data:
                    per_layer.setdefault(k, {})[pos] = data[k][row].copy()
        while len(self._results) > MAX_PENDING:
            self._results.popitem(last=False)
        self._step = []

    def take(self, capture_id: str) -> dict[str, Any] | None:
        """A request's captured rows (and forget them): layers, positions and float32 bytes
        ``[len(layers), len(positions), H]``; ``None`` if nothing was captured under that id."""
        got = self._results.pop(capture_id, None)
        if not got:
            return None
        layers = sorted(got)
        positions = sorted(set.intersection(*(set(got[k]) for k in layers)))
        arr = np.stack([np.stack([got[k][p] for p in positions]) for k in layers]) if positions else np.zeros(0)
        return {"layers": layers, "positions": positions, "data": arr.astype("<f4").tobytes()}


def install(runner: Any, max_rows: int) -> ActivationCapture:
    """Hooks and buffers on every decoder layer (from the plugin's ``load_model`` wrapper)."""
    from steering.model_info import ModelInfo
    from steering.vllm.runtime import find_decoder_layers

    info = ModelInfo.from_hf_config(str(runner.model_config.model), runner.model_config.hf_config)
    layers = find_decoder_layers(runner.get_model(), info.num_layers)
    cap = ActivationCapture(layers, info.hidden_size, max_rows, runner.device, runner.model_config.dtype)
    log.info("truthsteer: activation capture on %d layers, %d rows (%.1f MB)", len(cap.outs), max_rows,
             sum(t.numel() * t.element_size() for t in cap.outs.values()) / 1e6)
    return cap
