"""Echo scoring under ``decoding``: contrasted log-probabilities of the prompt tokens.

TruthfulQA-style scoring (completions with ``echo`` + ``logprobs``) reads vLLM's *prompt* logprobs,
which vLLM computes in ``GPUModelRunner._get_prompt_logprobs_dict`` from the final layer only,
chunk by chunk under chunked prefill. The plugin wraps that method with :func:`wrap`: it calls the
original, then, for every request with ``decoding`` whose prompt positions the stash captured this
step (:attr:`~steering.decoding.stash.HiddenStash.prompt_segments`), overwrites the chunk's slice of
the request's ``in_progress_prompt_logprobs_cpu`` (top token ids, logprobs, rank of the prompt
token) with the teacher-forced contrast, position by position, exactly as DoLa scores answers:

* ``log q_N`` from the final layer's hidden state at position ``t`` (the model's ``compute_logits``,
  as vLLM does), ``log q_j`` from the premature layers' stashed states at ``t`` (the model's own
  final norm and LM head, the functions the logits processor uses);
* the entropy gate per position (positions below the threshold keep vLLM's values bit for bit);
* :func:`steering.decoding.contrastive.apply_contrast` (DoLa's per-position JSD layer selection, fixed or
  fused contrast, plausibility mask with ``alpha``), then ``log_softmax`` over the plausible set:
  tokens outside it get ``-inf`` (the server writes ``-9999.0``, as vLLM's OpenAI server does);
  with ``echo_scores: "contrast"`` the contrast scores themselves, not normalised (DoLa's own
  TruthfulQA-MC scoring).
  Fixed and fused contrasts read the premature LM head at the plausible tokens only
  (:func:`~steering.decoding.logits_processor.sparse_contrast`): its dropped per-position constant
  cancels in the ``log_softmax``.

No second forward pass: everything is read from the pass that prefilled the prompt. The repetition
penalty is rejected at the API for echo scoring (its per-position history is not implemented here);
a raw-vLLM caller sending one gets the contrast without it (logged).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from steering.decoding.contrastive import apply_contrast, entropy_gate, log_softmax
from steering.decoding.logits_processor import (
    HeadFn,
    NormFn,
    TokenHeadFn,
    premature_logits,
    sparse_contrast,
    sparse_ok,
)
from steering.decoding.spec import ECHO_CONTRAST, ResolvedDecoding
from steering.decoding.stash import HiddenStash, PromptSegment

log = logging.getLogger(__name__)
BLOCK = 32  # prompt positions per batched LM-head call: bounds the [layers, BLOCK, V] temporaries

GatherFn = Callable[[torch.Tensor, int, torch.Tensor], Any]  # Sampler.gather_logprobs


def contrast_positions(
    final_hidden: torch.Tensor,
    stash: HiddenStash,
    seg: PromptSegment,
    norm: NormFn,
    head: HeadFn,
    token_head: TokenHeadFn | None,
    logits_mode: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrasted scores of a segment's positions that pass the entropy gate.

    ``final_hidden [count, H]``: the final layer's (normed) hidden states at the segment's token rows.
    Returns ``(positions [m] int64, scores [m, V] float32)``: positions within the segment, and per
    position the ``log_softmax`` of the contrast (``-inf`` outside the plausible set), or with
    ``logits_mode`` the contrast scores themselves (vLLM's ``raw_logits`` / ``processed_logits``).
    """
    cfg = seg.config
    if cfg.repetition_penalty != 1.0:
        log.warning("truthsteer: repetition_penalty is not applied to prompt logprobs")
        cfg = dataclasses.replace(cfg, repetition_penalty=1.0)
    positions: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    for start in range(0, seg.count, BLOCK):
        end = min(start + BLOCK, seg.count)
        final = head(final_hidden[start:end]).float()
        keep = torch.arange(start, end)
        if cfg.entropy_threshold is not None:
            gate = entropy_gate(log_softmax(final), cfg.entropy_threshold).cpu()
            final, keep = final[gate.to(final.device)], keep[gate]
            if keep.numel() == 0:
                continue
        rows = [seg.row + int(p) for p in keep]
        configs: list[ResolvedDecoding | None] = [cfg] * len(rows)
        if token_head is not None and sparse_ok(cfg) and not logits_mode:
            s = sparse_contrast(final, stash, norm, token_head, rows, [cfg] * len(rows))
        else:
            premature = premature_logits(stash, norm, head, rows, [cfg] * len(rows))
            s = apply_contrast(final, premature, configs, [[] for _ in rows])
        positions.append(keep)
        scores.append(s if logits_mode else log_softmax(s))
    if not positions:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 0)
    return torch.cat(positions), torch.cat(scores)


def overwrite(runner: Any, stash: HiddenStash, hidden_states: torch.Tensor, rid: str, seg: PromptSegment,
              tensors: Any, num_logprobs: int, gather: GatherFn) -> int:
    """Write the contrasted values of ``seg`` into the request's prompt ``LogprobsTensors``
    (``logprob_token_ids``, ``logprobs``, ``selected_token_ranks``, rows ``seg.start ..``).
    Returns the number of positions contrasted."""
    from steering.decoding.logits_processor import find_processor

    proc = find_processor(runner)
    if proc is None or proc.norm is None or proc.head is None:
        return 0
    mode = str(getattr(runner.model_config, "logprobs_mode", "raw_logprobs"))
    positions, scores = contrast_positions(
        hidden_states[seg.token_row : seg.token_row + seg.count], stash, seg, proc.norm, proc.head,
        proc.token_head, logits_mode=mode in ("raw_logits", "processed_logits") or seg.config.echo_scores == ECHO_CONTRAST,
    )
    if positions.numel() == 0:
        return 0
    prompt_ids = runner.requests[rid].prompt_token_ids
    targets = torch.tensor([prompt_ids[seg.start + 1 + int(p)] for p in positions], dtype=torch.int64,
                           device=scores.device)
    token_ids, logprobs, ranks, *_ = gather(scores, num_logprobs, targets)
    dest = positions + seg.start
    tensors.logprob_token_ids[dest] = token_ids.to("cpu", tensors.logprob_token_ids.dtype)
    tensors.logprobs[dest] = logprobs.to("cpu", tensors.logprobs.dtype)
    tensors.selected_token_ranks[dest] = ranks.to("cpu", tensors.selected_token_ranks.dtype)
    return int(positions.numel())


def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrapper of ``GPUModelRunner._get_prompt_logprobs_dict(hidden_states, num_scheduled_tokens)``."""

    @functools.wraps(fn)
    def _get_prompt_logprobs_dict(self: Any, hidden_states: torch.Tensor, num_scheduled_tokens: dict[str, int]
                                  ) -> Any:
        stash: HiddenStash | None = getattr(self, "truthsteer_stash", None)
        if stash is None or not stash.prompt_segments:
            return fn(self, hidden_states, num_scheduled_tokens)
        # what the original is about to compute (it drops finished requests from its bookkeeping);
        # the segments' positions come from the step plan, from the same counts vLLM uses here
        todo: list[tuple[str, PromptSegment, int]] = []
        for rid, seg in stash.prompt_segments.items():
            k = self.num_prompt_logprobs.get(rid)
            req = self.requests.get(rid)
            if k is None or req is None or rid not in num_scheduled_tokens or req.prompt_token_ids is None:
                continue
            todo.append((rid, seg, int(k)))
        out = fn(self, hidden_states, num_scheduled_tokens)
        for rid, seg, k in todo:
            tensors = out.get(rid) if out.get(rid) is not None else self.requests[rid].in_progress_prompt_logprobs_cpu
            if tensors is None:
                continue
            stash.prompt_positions += overwrite(self, stash, hidden_states, rid, seg, tensors, k,
                                                self.sampler.gather_logprobs)
        stash.prompt_segments = {}
        return out

    return _get_prompt_logprobs_dict
