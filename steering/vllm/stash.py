"""Worker-side stash of premature-layer hidden states for contrastive decoding (``decoding``).

Premature layer ``k`` (HF's ``hidden_states[k]``) is the stream entering decoder layer ``k``: the
embeddings for ``k = 0`` (a pre-hook on layer 0), the output of decoder layer ``k - 1`` (after its
steering) for ``k >= 1``. Every premature layer ``0 .. N-1`` gets a fixed buffer ``[max_reqs, H]``
registered on its decoder layer and a hook calling ``truthsteer::stash``, installed before the first
(compiling) forward pass; the final layer ``N`` is what the logits processor already receives.

Per step, :meth:`HiddenStash.prepare` (from the plugin's ``_model_forward`` wrapper, in the
runner's batch-row order, which the logits processor sees too) finds the requests whose
``SamplingParams.extra_args["truthsteer"]["decoding"]`` asks for a contrast and that sample a
token this step, points row ``i`` of the shared row table at request ``i``'s sampling position,
and switches on exactly the layers that those requests read. Layers nobody reads cost one skipped
op call on CPU. After the pass, :meth:`hidden` returns the stashed states of chosen batch rows.

Probe-gated decoding (``decoding.gate``): such requests' sampling rows are also read by the probe
read-out (:meth:`prepare` returns them as ``watch``); after the pass, :meth:`decide` folds each
one's score at the decoded position into its :class:`~steering.vllm.gates.GateState` and drops
the rows whose gate stays closed from ``step_configs``, so the logits processor leaves them plain.
Prompt positions (echo scoring, below) are never gated.

Echo scoring (contrasted prompt logprobs, ``steering/vllm/prompt_contrast.py``): built with
``prompt_rows > 0`` (the runner's ``max_num_tokens``), the buffers have ``max_reqs + prompt_rows``
rows, and for requests with ``decoding`` *and* ``prompt_logprobs`` the prompt positions whose
logprobs vLLM computes this step (mirroring ``GPUModelRunner._get_prompt_logprobs_dict``) are
stashed too, in rows ``n_batch ..`` after the sampling rows (:attr:`HiddenStash.prompt_segments`).
Every step holds at most ``max_reqs`` sampling rows and at most ``max_num_tokens`` prompt rows (each
one a distinct token of the step), so the buffers cannot overflow. Memory: ``num_layers x (max_reqs
+ prompt_rows) x hidden_size x dtype bytes`` (the default CPU server: 30 x (128 + 2048) x 576 x 4 B =
150 MB; without echo scoring 30 x 128 x 576 x 4 B = 8.8 MB).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from steering.contrastive import layers_needed
from steering.decoding_spec import CONTRAST, DOLA, WIRE_KEY, ResolvedDecoding
from steering.spec import EXTRA_ARGS_KEY
from steering.vllm.custom_op import stash_hook, stash_pre_hook
from steering.vllm.gates import GateState
from steering.vllm.probe_channel import CONTRASTED

log = logging.getLogger(__name__)


def parse_decoding_request(extra_args: Any, num_layers: int) -> ResolvedDecoding | None:
    """The active decoding config of a request (``None``: plain decoding).

    Validated at the point of entry; a raw-vLLM caller may still send junk, which raises
    ``ValueError`` / ``KeyError`` / ``TypeError`` here (the caller logs it and decodes plainly).
    """
    extra = extra_args.get(EXTRA_ARGS_KEY) if isinstance(extra_args, dict) else None
    raw = extra.get(WIRE_KEY) if isinstance(extra, dict) else None
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError(f"decoding must be an object, got {type(raw).__name__}")
    cfg = ResolvedDecoding.from_wire(raw)
    if not cfg.active:
        return None
    if cfg.method not in (DOLA, CONTRAST) or not cfg.layers:
        raise ValueError(f"bad decoding config {raw!r}")
    if any(not 0 <= k < num_layers for k in cfg.layers) or len(set(cfg.layers)) != len(cfg.layers):
        raise ValueError(f"premature layers {list(cfg.layers)} outside [0, {num_layers})")
    if cfg.method == CONTRAST and len(cfg.weights) != len(cfg.layers):
        raise ValueError("contrast needs one weight per layer")
    return cfg


@dataclass(frozen=True)
class PromptSegment:
    """Stashed prompt positions of one request this step: prompt logprob indices ``start ..
    start + count`` (the hidden state at prompt position ``p`` predicts token ``p + 1``) are token
    rows ``token_row ..`` of the step and stash rows ``row ..``."""

    config: ResolvedDecoding
    start: int
    count: int
    token_row: int
    row: int


class HiddenStash:
    def __init__(self, layers: nn.ModuleList, hidden_size: int, max_reqs: int, device: torch.device,
                 dtype: torch.dtype, prompt_rows: int = 0,
                 probe_column: Callable[[str], int | None] | None = None) -> None:
        """``prompt_rows``: extra rows for echo scoring (0: off). ``probe_column``: the probe
        read-out's column of a probe name (``None``: not loaded), for decoding gates; without it
        gated configs are rejected (the request decodes plainly)."""
        self.probe_column = probe_column
        self.num_layers = len(layers)
        self.max_reqs = max_reqs
        self.prompt_rows = prompt_rows  # extra rows for echo scoring (0: off)
        capacity = max_reqs + prompt_rows
        self.rows = torch.zeros(capacity, dtype=torch.int64, device=device)  # shared by every layer
        self.rows_np = np.zeros(capacity, dtype=np.int64)
        self.outs: dict[int, torch.Tensor] = {}
        self.actives: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        for k in range(self.num_layers):
            # premature layer k lives on decoder layer k (input, k = 0) or k - 1 (output)
            module = layers[0] if k == 0 else layers[k - 1]
            if type(module).__name__ == "PPMissingLayer":  # not on this pipeline stage
                continue
            out = torch.zeros(capacity, hidden_size, dtype=dtype, device=device)
            active = torch.zeros(1, dtype=torch.int32)
            suffix = "0" if k == 0 else ""
            module.register_buffer("_ts_srows", self.rows, persistent=False)
            module.register_buffer(f"_ts_sout{suffix}", out, persistent=False)
            module.register_buffer(f"_ts_sactive{suffix}", active, persistent=False)
            if k == 0:
                self._handles.append(module.register_forward_pre_hook(stash_pre_hook))
            else:
                self._handles.append(module.register_forward_hook(stash_hook))
            self.outs[k], self.actives[k] = out, active
        self._requests: dict[str, ResolvedDecoding | None] = {}
        self._on: set[int] = set()
        self.step_configs: list[ResolvedDecoding | None] = []  # per batch row, this step
        self._gates: dict[str, GateState] = {}
        self._step_gated: list[tuple[int, str, GateState, int]] = []  # (batch row, request, gate, column)
        self.prompt_segments: dict[str, PromptSegment] = {}  # echo scoring, this step, by request id
        self.rejected = 0
        self.prompt_unsupported = 0  # decoding + prompt_logprobs on a stash built without prompt rows
        self.prompt_positions = 0  # prompt positions contrasted so far (prompt_contrast)
        self.prompt_mismatches = 0  # segments that disagreed with vLLM's own count (left plain)

    def _config(self, req_id: str, state: Any) -> ResolvedDecoding | None:
        if req_id not in self._requests:
            params = getattr(state, "sampling_params", None)
            cfg = None
            try:
                cfg = parse_decoding_request(getattr(params, "extra_args", None), self.num_layers)
            except (KeyError, TypeError, ValueError) as e:
                self.rejected += 1
                log.warning("truthsteer: ignoring invalid decoding of request %s: %s", req_id, e)
            if cfg is not None and any(k not in self.outs for k in cfg.layers):
                self.rejected += 1
                log.warning("truthsteer: premature layers %s of %s are not on this worker", cfg.layers, req_id)
                cfg = None
            gate = cfg.gate if cfg is not None else None
            if gate is not None:
                if self._column(gate.probe) is None:
                    self.rejected += 1
                    log.warning("truthsteer: probe %r of the decoding gate of %s is not loaded", gate.probe, req_id)
                    cfg = None
                else:
                    self._gates[req_id] = GateState(gate)
            self._requests[req_id] = cfg
        return self._requests[req_id]

    def _column(self, probe: str) -> int | None:
        return self.probe_column(probe) if self.probe_column is not None else None

    def prepare(self, req_ids: list[str], states: Any, qsl: np.ndarray, num_prompt: np.ndarray,
                num_computed: np.ndarray, prompt_logprobs: Mapping[str, int] | None = None) -> dict[str, int]:
        """Choose this step's rows and layers (``qsl``: ``query_start_loc`` of the batch;
        ``prompt_logprobs``: the runner's ``num_prompt_logprobs``, requests still owed prompt
        logprobs).

        Returns the requests with a decoding gate that sample this step (their sampling rows must
        be read by the probe read-out), each with flag bits 0."""
        n = len(req_ids)
        configs: list[ResolvedDecoding | None] = [None] * n
        gated: list[tuple[int, str, GateState, int]] = []
        prompt: list[tuple[int, ResolvedDecoding]] = []
        for i, rid in enumerate(req_ids):
            cfg = self._config(rid, states.get(rid))
            s, e = int(qsl[i]), int(qsl[i + 1])
            if cfg is not None and prompt_logprobs and rid in prompt_logprobs and e > s:
                prompt.append((i, cfg))
            if cfg is None or e <= s or int(num_computed[i]) + (e - s) < int(num_prompt[i]):
                continue  # plain, not scheduled, or a partial prefill chunk (its sample is discarded)
            configs[i] = cfg
            if cfg.gate is not None:
                col = self._column(cfg.gate.probe)
                assert col is not None  # checked in _config
                gated.append((i, rid, self._gates[rid], col))
        if len(self._requests) > n:
            live = set(req_ids)
            for rid in [r for r in self._requests if r not in live]:
                del self._requests[rid]
                self._gates.pop(rid, None)
        self.step_configs = configs
        self._step_gated = gated
        segments = self._prompt_segments(req_ids, prompt, qsl, num_prompt, num_computed) if prompt else {}
        self.prompt_segments = segments
        used = n + sum(seg.count for seg in segments.values())
        on = set(layers_needed(configs + [seg.config for seg in segments.values()]))
        if on:
            # every batch row points at its last scheduled token (valid for this step's tokens);
            # rows past the batch point at token 0 so that a full copy on accelerators stays in range
            self.rows_np[:n] = np.maximum(qsl[1 : n + 1].astype(np.int64) - 1, 0)
            self.rows_np[n:] = 0
            for seg in segments.values():  # echo scoring: the prompt positions, after the batch rows
                self.rows_np[seg.row : seg.row + seg.count] = np.arange(seg.token_row, seg.token_row + seg.count)
            self.rows.copy_(torch.from_numpy(self.rows_np))
        elif self._on:
            self.rows.zero_()  # accelerators copy every row every step: keep indices in range of any step
        for k in on | self._on:
            self.actives[k].fill_(used if k in on else 0)
        self._on = on
        return {rid: 0 for _, rid, _, _ in gated}

    def decide(self, sampled: Mapping[str, np.ndarray]) -> dict[str, int]:
        """After the pass, before sampling: update the decoding gates from the probe scores at the
        decoded positions (``sampled``: request -> calibrated scores ``[P]``) and leave the rows of
        closed gates plain this step. Returns ``CONTRASTED`` or 0 per gated request."""
        out: dict[str, int] = {}
        for i, rid, gate, col in self._step_gated:
            scores = sampled.get(rid)
            if scores is None:  # never read: decode plainly rather than guess
                log.warning("truthsteer: no probe score for the decoding gate of %s; step left plain", rid)
                self.step_configs[i] = None
                out[rid] = 0
                continue
            gate.update(float(scores[col]))
            if not gate.open:
                self.step_configs[i] = None
            out[rid] = CONTRASTED if gate.open else 0
        self._step_gated = []
        return out

    def _prompt_segments(self, req_ids: list[str], prompt: list[tuple[int, ResolvedDecoding]], qsl: np.ndarray,
                         num_prompt: np.ndarray, num_computed: np.ndarray) -> dict[str, PromptSegment]:
        """The prompt positions whose logprobs vLLM computes this step, as
        ``GPUModelRunner._get_prompt_logprobs_dict`` counts them: from ``num_computed`` on,
        ``min(scheduled, num_prompt - num_computed - 1)`` positions (the last prompt position
        predicts the first generated token, not a prompt token)."""
        if not self.prompt_rows:
            self.prompt_unsupported += len(prompt)
            log.warning("truthsteer: %d request(s) ask for contrasted prompt logprobs, which this engine does "
                        "not capture (prompt_contrast off); they get plain prompt logprobs", len(prompt))
            return {}
        out: dict[str, PromptSegment] = {}
        row = len(req_ids)
        for i, cfg in prompt:
            s, e = int(qsl[i]), int(qsl[i + 1])
            count = min(e - s, int(num_prompt[i]) - int(num_computed[i]) - 1)
            if count <= 0:
                continue
            if row + count > self.rows_np.shape[0]:  # impossible with prompt_rows >= max_num_tokens
                self.prompt_unsupported += 1
                log.error("truthsteer: prompt stash overflow (%d > %d rows); %s gets plain prompt logprobs",
                          row + count, self.rows_np.shape[0], req_ids[i])
                continue
            out[req_ids[i]] = PromptSegment(cfg, int(num_computed[i]), count, s, row)
            row += count
        return out

    def hidden(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """The stashed stream of premature layer ``layer`` at batch rows ``rows``: ``[len(rows), H]``."""
        return self.outs[layer].index_select(0, rows.to(self.outs[layer].device))
