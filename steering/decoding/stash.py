"""Worker-side stash of premature-layer hidden states for contrastive decoding (``decoding``).

Premature layer ``k`` (HF's ``hidden_states[k]``) is the stream entering decoder layer ``k``: the
embeddings for ``k = 0`` (a pre-hook on layer 0), the output of decoder layer ``k - 1`` (after its
steering) for ``k >= 1``. Every premature layer ``0 .. N-1`` gets a fixed buffer ``[max_reqs, H]``
registered on its decoder layer and a hook calling ``truthsteer::stash``, installed before the first
(compiling) forward pass; the final layer ``N`` is what the logits processor already receives.

Per step, :meth:`HiddenStash.prepare` reads the step's :class:`~steering.vllm.step_plan.StepPlan`
(in the runner's batch-row order, which the logits processor sees too): its ``contrast`` holds,
per batch row, the decoding config of a request that samples a token this step. It points row
``i`` of the shared row table at request ``i``'s sampling position and switches on exactly the
layers that those requests read. Layers nobody reads cost one skipped op call on CPU. After the
pass, :meth:`hidden` returns the stashed states of chosen batch rows, and :attr:`step_configs`
(the plan's ``contrast``) tells the logits processor which rows to contrast with which config.

Probe-gated decoding (``decoding.gate``): the probe read-out reads such requests' sampling rows and
the plan decides their gates after the pass (:meth:`~steering.vllm.step_plan.StepPlan.decide`),
dropping the rows whose gate stays closed from ``contrast``, so the logits processor leaves them
plain. Prompt positions (echo scoring, below) are never gated.

Echo scoring (contrasted prompt logprobs, ``steering/decoding/prompt_contrast.py``): built with
``prompt_rows > 0`` (the runner's ``max_num_tokens``), the buffers have ``max_reqs + prompt_rows``
rows, and for requests with ``decoding`` *and* ``prompt_logprobs`` the prompt positions whose
logprobs vLLM computes this step (:attr:`~steering.vllm.step_plan.RowSpan.prompt_logprob_rows`,
mirroring ``GPUModelRunner._get_prompt_logprobs_dict``) are stashed too, in rows ``n_batch ..``
after the sampling rows (:attr:`HiddenStash.prompt_segments`).
Every step holds at most ``max_reqs`` sampling rows and at most ``max_num_tokens`` prompt rows (each
one a distinct token of the step), so the buffers cannot overflow. Memory: ``num_layers x (max_reqs
+ prompt_rows) x hidden_size x dtype bytes`` (the default CPU server: 30 x (128 + 2048) x 576 x 4 B =
150 MB; without echo scoring 30 x 128 x 576 x 4 B = 8.8 MB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from steering.decoding.contrastive import layers_needed
from steering.decoding.spec import ResolvedDecoding
from steering.request import DECODING
from steering.vllm.custom_op import stash_hook, stash_pre_hook
from steering.vllm.step_plan import RowSpan, StepPlan

log = logging.getLogger(__name__)


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
                 dtype: torch.dtype, prompt_rows: int = 0) -> None:
        """``prompt_rows``: extra rows for echo scoring (0: off)."""
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
        self._on: set[int] = set()
        self._plan: StepPlan | None = None
        self.prompt_segments: dict[str, PromptSegment] = {}  # echo scoring, this step, by request id
        self.rejected = 0  # requests whose decoding was refused on this worker (they decode plainly)
        self.prompt_unsupported = 0  # decoding + prompt_logprobs on a stash built without prompt rows
        self.prompt_positions = 0  # prompt positions contrasted so far (prompt_contrast)

    @property
    def step_configs(self) -> list[ResolvedDecoding | None]:
        """Per batch row, the config to contrast this step with (the plan's ``contrast``, after
        its gates are decided); what the logits processor reads."""
        return self._plan.contrast if self._plan is not None else []

    def prepare(self, plan: StepPlan) -> None:
        """Choose this step's rows and layers from the plan."""
        self.rejected += plan.rejected.get(DECODING, 0)
        self._plan = plan
        n = len(plan.spans)
        echo = [s for s in plan.spans if s.state.decoding is not None and s.req_id in plan.echo and s.scheduled]
        segments = self._prompt_segments(n, echo) if echo else {}
        self.prompt_segments = segments
        used = n + sum(seg.count for seg in segments.values())
        on = set(layers_needed(plan.contrast + [seg.config for seg in segments.values()]))
        if on:
            # every batch row points at its last scheduled token (valid for this step's tokens);
            # rows past the batch point at token 0 so that a full copy on accelerators stays in range
            self.rows_np[:n] = [max(s.end - 1, 0) for s in plan.spans]
            self.rows_np[n:] = 0
            for seg in segments.values():  # echo scoring: the prompt positions, after the batch rows
                self.rows_np[seg.row : seg.row + seg.count] = np.arange(seg.token_row, seg.token_row + seg.count)
            self.rows.copy_(torch.from_numpy(self.rows_np))
        elif self._on:
            self.rows.zero_()  # accelerators copy every row every step: keep indices in range of any step
        for k in on | self._on:
            self.actives[k].fill_(used if k in on else 0)
        self._on = on

    def _prompt_segments(self, n_batch: int, echo: list[RowSpan]) -> dict[str, PromptSegment]:
        """The prompt positions whose logprobs vLLM computes this step, in stash rows after the
        ``n_batch`` sampling rows."""
        if not self.prompt_rows:
            self.prompt_unsupported += len(echo)
            log.warning("truthsteer: %d request(s) ask for contrasted prompt logprobs, which this engine does "
                        "not capture (prompt_contrast off); they get plain prompt logprobs", len(echo))
            return {}
        out: dict[str, PromptSegment] = {}
        row = n_batch
        for span in echo:
            count = span.prompt_logprob_rows
            if count <= 0:
                continue
            if row + count > self.rows_np.shape[0]:  # impossible with prompt_rows >= max_num_tokens
                self.prompt_unsupported += 1
                log.error("truthsteer: prompt stash overflow (%d > %d rows); %s gets plain prompt logprobs",
                          row + count, self.rows_np.shape[0], span.req_id)
                continue
            assert span.state.decoding is not None
            out[span.req_id] = PromptSegment(span.state.decoding, span.position, count, span.start, row)
            row += count
        return out

    def hidden(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """The stashed stream of premature layer ``layer`` at batch rows ``rows``: ``[len(rows), H]``."""
        return self.outs[layer].index_select(0, rows.to(self.outs[layer].device))
