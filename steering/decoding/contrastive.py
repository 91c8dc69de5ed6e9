"""Contrastive lower-layer decoding on batched rows: pure torch, no vLLM.

Every function works on ``[rows, vocab]`` float32 tensors (``[layers, rows, vocab]`` for stacks of
premature layers). Log-probabilities are natural-log; entropies and divergences are in nats.

* DoLa (Chuang et al. 2023): among candidate premature layers pick, per row, the one whose
  distribution is farthest from the final layer's (Jensen-Shannon divergence), then
  ``log p_final - log p_premature`` on the plausible tokens.
* Fixed-layer contrast: the same with one given layer; fused contrast ("Lower Layer Matters"): a
  weighted sum of the contrasts with several layers.
* Adaptive plausibility constraint: only tokens with ``p_final >= alpha * max p_final`` keep a
  finite score; the others get ``-inf``.
* Entropy gate (USCD-style selective contrast): rows whose final distribution has entropy below a
  threshold keep their original logits, bit for bit.
* Repetition penalty as HF's ``RepetitionPenaltyLogitsProcessor`` (DoLa's recommended companion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from steering.decoding.spec import DOLA, ResolvedDecoding


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-probabilities over the last dimension."""
    return torch.log_softmax(logits.float(), dim=-1)


_CHUNK_ELEMENTS = 1 << 20  # ~4 MB of float32 per temporary: the passes of one chunk stay in cache
_LOG_FLOOR = -1e4  # stands in for log 0: x * max(log x, floor) is exactly 0 at x = 0, as xlogy


def jsd(final_logp: torch.Tensor, premature_logp: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) of each premature layer from the final layer.

    ``final_logp [rows, V]``, ``premature_logp [L, rows, V]`` -> ``[L, rows]``; with
    ``M = (P + Q) / 2``: ``JSD = KL(P || M) / 2 + KL(Q || M) / 2``, in ``[0, ln 2]``, computed in
    probability space as the sum over tokens of ``(p log p + q log q) / 2 - m log m``
    (``0 log 0 = 0``). Each term is >= 0 (``x log x`` is convex), so the sum has no cancellation
    and its rounding stays relative to the JSD itself (summing three separate entropies instead
    would cancel ~10-nat terms down to a ~0.1-nat result, with about 100x the rounding error near
    tied layers).

    Cost: one ``exp`` and one ``log`` per element of ``[L, rows, V]`` (``q log q`` reuses the
    given ``log q``; ``p log p`` is computed once per row, not per layer), in chunks of rows small
    enough for the temporaries to stay in cache: 3.5x faster on CPU than whole-tensor passes with
    ``xlogy`` (DoLa's 8 candidates x 64 rows x 49k tokens), equal to the KL definition within 2e-6
    (tested).
    """
    p = final_logp.exp()
    plogp = torch.special.xlogy(p, p)
    layers, rows, vocab = premature_logp.shape
    out = torch.empty(layers, rows, dtype=premature_logp.dtype, device=premature_logp.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, layers * vocab))
    for s in range(0, rows, step):
        lq = premature_logp[:, s : s + step]
        q = lq.exp()
        m = (q + p[s : s + step]).mul_(0.5)
        m_log_m = m.log().clamp_min_(_LOG_FLOOR).mul_(m)
        q_log_q = lq.clamp_min(_LOG_FLOOR).mul_(q)
        out[:, s : s + step] = q_log_q.add_(plogp[s : s + step]).mul_(0.5).sub_(m_log_m).sum(-1)
    return out


def jsd_select(final_logp: torch.Tensor, premature_logp: torch.Tensor) -> torch.Tensor:
    """Index (into the ``L`` axis of ``premature_logp [L, rows, V]``) of the layer with the
    largest JSD from the final layer, per row; ties go to the first. ``-> [rows]`` int64."""
    return jsd(final_logp, premature_logp).argmax(dim=0)


def gather_layers(premature_logp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Row ``r`` of layer ``index[r]``: ``[L, rows, V]``, ``[rows]`` -> ``[rows, V]``."""
    rows = torch.arange(premature_logp.shape[1], device=premature_logp.device)
    return premature_logp[index, rows]


def log_alpha(alpha: float) -> float:
    """``log alpha``, ``-inf`` for ``alpha = 0`` (the constraint off)."""
    return math.log(alpha) if alpha > 0 else -math.inf


def plausibility_mask(final_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Adaptive plausibility constraint: ``True`` where ``p >= alpha * max p`` (compared in log
    space, ``log p >= max log p + log alpha``, as HF's DoLa does). ``[rows, V]`` bool.

    ``alpha = 0`` switches it off (DoLa's own TruthfulQA-MC scoring, ``relative_top 0.0``): every
    token the final layer does not rule out (``p > 0``) stays."""
    if alpha == 0:
        return final_logp > -math.inf
    top = final_logp.max(dim=-1, keepdim=True).values
    return final_logp >= top + log_alpha(alpha)


def contrast_logits(final_logp: torch.Tensor, premature_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log p_final - log p_premature`` where ``mask``, ``-inf`` elsewhere (``[rows, V]``)."""
    return torch.where(mask, final_logp - premature_logp, -math.inf)


def fused_contrast(
    final_logp: torch.Tensor, premature_logps: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``sum_l w_l (log p_final - log p_l)`` where ``mask``, ``-inf`` elsewhere.

    ``premature_logps [L, rows, V]``, ``weights [L]`` (summing to 1 for a proper mixture).
    """
    w = weights.to(final_logp).view(-1, 1, 1)
    diff = (w * (final_logp.unsqueeze(0) - premature_logps)).sum(0)
    return torch.where(mask, diff, -math.inf)


def entropy(final_logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row: ``[rows, V]`` -> ``[rows]`` (0 for one-hot rows)."""
    zero = torch.zeros((), dtype=final_logp.dtype, device=final_logp.device)
    return -torch.where(final_logp > -math.inf, final_logp.exp() * final_logp, zero).sum(-1)


def entropy_gate(final_logp: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Rows to contrast: entropy ``>= threshold`` (all rows when ``threshold`` is ``None``)."""
    if threshold is None:
        return torch.ones(final_logp.shape[0], dtype=torch.bool, device=final_logp.device)
    return entropy(final_logp) >= threshold


def repetition_penalty(
    logits: torch.Tensor, previous_token_ids: Sequence[Sequence[int]], penalty: float
) -> torch.Tensor:
    """HF's repetition penalty: for every token already seen by the row, divide a positive score by
    ``penalty`` and multiply a negative one by it (``-inf`` stays ``-inf``); ids outside the
    vocabulary are ignored, as HF does. Returns a new tensor."""
    out = logits.clone()
    if penalty == 1.0:
        return out
    vocab = logits.shape[-1]
    for r, ids in enumerate(previous_token_ids):
        seen_ids = sorted({int(t) for t in ids if 0 <= t < vocab})
        if not seen_ids:
            continue
        idx = torch.tensor(seen_ids, dtype=torch.long, device=logits.device)
        seen = out[r, idx]
        out[r, idx] = torch.where(seen < 0, seen * penalty, seen / penalty)
    return out


def contrast_rows(
    final_logits: torch.Tensor,
    premature_logits: torch.Tensor,
    cfg: ResolvedDecoding,
    previous_token_ids: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Contrasted scores of rows that all share ``cfg`` (no entropy gate here).

    ``final_logits [rows, V]``, ``premature_logits [L, rows, V]`` in the order of ``cfg.layers``.
    """
    final_logp = log_softmax(final_logits)
    premature_logp = log_softmax(premature_logits)
    mask = plausibility_mask(final_logp, cfg.alpha)
    if cfg.method == DOLA:
        if premature_logp.shape[0] == 1:
            chosen = premature_logp[0]
        else:
            chosen = gather_layers(premature_logp, jsd_select(final_logp, premature_logp))
        scores = contrast_logits(final_logp, chosen, mask)
    else:
        weights = torch.tensor(cfg.weights, dtype=torch.float32, device=final_logits.device)
        scores = fused_contrast(final_logp, premature_logp, weights, mask)
    return repetition_penalty(scores, previous_token_ids, cfg.repetition_penalty)


def stack_blocks(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``, as a view without a copy when the tensors are consecutive blocks
    of one contiguous buffer (the layers of one batched LM-head call, as
    :func:`steering.decoding.logits_processor.premature_logits` returns them): on CPU the copy of DoLa's
    8 x 64 x 49k premature logits costs a tenth of the step."""
    first = tensors[0]
    step = first.numel()
    consecutive = first.is_contiguous() and all(
        t.shape == first.shape and t.dtype == first.dtype and t.is_contiguous()
        and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and t.storage_offset() == first.storage_offset() + i * step
        for i, t in enumerate(tensors)
    )
    if not consecutive:
        return torch.stack(list(tensors))
    return first.as_strided((len(tensors), *first.shape), (step, *first.stride()), first.storage_offset())


def layers_needed(configs: Sequence[ResolvedDecoding | None]) -> list[int]:
    """Sorted union of the premature layers that the active rows of a batch read."""
    return sorted({k for c in configs if c is not None and c.active for k in c.layers})


def apply_contrast(
    final_logits: torch.Tensor,
    premature_logits: Mapping[int, torch.Tensor],
    configs: Sequence[ResolvedDecoding | None],
    previous_token_ids: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Next-token scores for a batch whose rows may each use a different decoding config.

    ``final_logits [rows, V]``: the model's logits; ``premature_logits[k] [rows, V]``: the LM head
    (after the final norm) on premature layer ``k`` for the same rows, for every ``k`` in
    :func:`layers_needed` (rows that do not use ``k`` may hold anything); ``configs[r]``: row
    ``r``'s config (``None`` or method ``none``: untouched); ``previous_token_ids[r]``: the prompt
    and output tokens of row ``r`` (read only for the repetition penalty). Untouched rows and rows
    held back by the entropy gate come back bitwise equal; the result is a new tensor.
    """
    if len(configs) != final_logits.shape[0] or len(previous_token_ids) != final_logits.shape[0]:
        raise ValueError(
            f"{final_logits.shape[0]} rows but {len(configs)} configs and "
            f"{len(previous_token_ids)} token histories"
        )
    out = final_logits.clone()
    groups: dict[ResolvedDecoding, list[int]] = {}
    for r, cfg in enumerate(configs):
        if cfg is not None and cfg.active:
            groups.setdefault(cfg, []).append(r)
    for cfg, rows in groups.items():
        idx = torch.tensor(rows, dtype=torch.long, device=final_logits.device)
        if cfg.entropy_threshold is not None:
            gate = entropy_gate(log_softmax(final_logits[idx]), cfg.entropy_threshold)
            idx = idx[gate]
            if idx.numel() == 0:
                continue
        if idx.numel() == final_logits.shape[0]:  # every row, in order: no gather
            stacked = stack_blocks([premature_logits[k] for k in cfg.layers])
        else:
            stacked = torch.stack([premature_logits[k][idx] for k in cfg.layers])
        history = [previous_token_ids[int(r)] for r in idx.tolist()]
        out[idx] = contrast_rows(final_logits[idx], stacked, cfg, history).to(out.dtype)
    return out
