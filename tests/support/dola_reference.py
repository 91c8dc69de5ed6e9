"""Readable reference for contrastive lower-layer decoding over an HF transformers model.

Plain PyTorch, written from the equations of DoLa (Chuang et al. 2023, "DoLa: Decoding by
Contrasting Layers Improves Factuality in Large Language Models", eqs. 1-4) and HF transformers'
``_dola_decoding`` (<= 4.55), independently of ``steering.decoding.contrastive`` so that the two can check
each other. One step, for one sequence:

* ``q_j = softmax(head(norm(h_j)))`` for each premature layer ``j`` (``h_j = hidden_states[j]``,
  0 = embeddings), ``q_N`` the model's own next-token distribution;
* DoLa picks ``M = argmax_j JSD(q_N || q_j)`` among the candidates (fixed when there is one);
* plausible tokens ``V_head = {x : q_N(x) >= alpha * max_w q_N(w)}``;
* score ``F(x) = log q_N(x) - log q_M(x)`` on ``V_head``, ``-inf`` elsewhere; the fused contrast
  uses ``sum_j w_j (log q_N(x) - log q_j(x))`` instead;
* optional: HF's repetition penalty on ``F`` over every token of the sequence so far, and the
  entropy gate (steps with ``H(q_N) < threshold`` keep the plain logits);
* greedy: the next token is ``argmax F``.

``final_norm=False`` applies the LM head to the raw hidden state as HF's DoLa did; truthsteer
applies the model's final norm first (``final_norm=True``, the default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# the prompts of the DoLa parity tests (tests/integration: reference, decoding, server)
PROMPTS = [
    "The capital of France is",
    "The largest planet in the solar system is",
    "Water boils at a temperature of",
    "The author of Romeo and Juliet is",
    "The chemical symbol for gold is",
    "The first person to walk on the moon was",
    "The tallest mountain on Earth is",
    "The speed of light is approximately",
    "Penguins live mostly in",
    "The Great Wall of China was built to",
]


@dataclass(frozen=True)
class Step:
    """What one decoding step saw and chose (for debugging parity failures)."""

    token: int
    layer: int | None  # premature layer contrasted with (DoLa), None when gated or fused
    contrasted: bool
    gate_score: float | None = None  # what ``gate`` returned its decision from, if given


def _final_norm(model: Any) -> Any:
    inner = getattr(model, "model", model)
    inner = getattr(inner, "language_model", inner)
    return inner.norm


def _js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """JSD(p || q) of two probability vectors, in nats."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> float:
        nz = a > 0
        return float((a[nz] * (a[nz].log() - m[nz].log())).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def _contrast(log_qn: torch.Tensor, log_q: dict[int, torch.Tensor], method: str, layers: Sequence[int],
              weights: Sequence[float], alpha: float) -> tuple[torch.Tensor, int | None]:
    """One position's scores ``F`` (``-inf`` outside the plausible set) and DoLa's chosen layer."""
    plausible = log_qn >= log_qn.max() + (math.log(alpha) if alpha > 0 else -math.inf)
    chosen: int | None = None
    if method == "dola":
        divs = [_js_divergence(log_qn.exp(), log_q[j].exp()) for j in layers]
        chosen = layers[max(range(len(layers)), key=lambda i: (divs[i], -i))]
        diff = log_qn - log_q[chosen]
    else:
        diff = sum(w * (log_qn - log_q[j]) for w, j in zip(weights, layers, strict=True))
        assert isinstance(diff, torch.Tensor)
    scores = torch.full_like(log_qn, -math.inf)
    scores[plausible] = diff[plausible]
    return scores, chosen


@torch.inference_mode()
def generate(
    model: Any,
    prompt_ids: Sequence[int],
    *,
    method: str = "dola",
    layers: Sequence[int],
    weights: Sequence[float] = (),
    alpha: float = 0.1,
    entropy_threshold: float | None = None,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 16,
    eos_token_id: int | None = None,
    final_norm: bool = True,
    gate: Callable[[Sequence[torch.Tensor]], tuple[bool, float]] | None = None,
) -> list[Step]:
    """Greedy contrastive decoding of one prompt; ``method`` is ``"dola"`` or ``"contrast"``.

    ``gate`` (probe-gated decoding) gets the step's hidden states (HF's ``hidden_states``, each
    ``[1, seq, H]``) and returns ``(contrast this step, the score it decided from)``."""
    head = model.get_output_embeddings()
    norm = _final_norm(model) if final_norm else (lambda h: h)
    ids = list(prompt_ids)
    steps: list[Step] = []
    past = None
    feed = torch.tensor([ids])
    for _ in range(max_new_tokens):
        out = model(input_ids=feed, past_key_values=past, use_cache=True, output_hidden_states=True)
        past = out.past_key_values
        final_logits = out.logits[0, -1].float()
        log_qn = torch.log_softmax(final_logits, -1)
        qn = log_qn.exp()
        entropy = float(-(qn[qn > 0] * log_qn[qn > 0]).sum())
        opened, score = gate(out.hidden_states) if gate is not None else (True, None)
        if (entropy_threshold is not None and entropy < entropy_threshold) or not opened:
            token = int(final_logits.argmax())
            step = Step(token, None, False, score)
        else:
            log_q = {j: torch.log_softmax(head(norm(out.hidden_states[j][0, -1])).float(), -1) for j in layers}
            scores, chosen = _contrast(log_qn, log_q, method, layers, weights, alpha)
            if repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(ids)))
                s = scores[seen]
                scores[seen] = torch.where(s < 0, s * repetition_penalty, s / repetition_penalty)
            token = int(scores.argmax())
            step = Step(token, chosen, True, score)
        steps.append(step)
        ids.append(token)
        if eos_token_id is not None and token == eos_token_id:
            break
        feed = torch.tensor([[token]])
    return steps


@torch.inference_mode()
def score(
    model: Any,
    ids: Sequence[int],
    *,
    method: str = "dola",
    layers: Sequence[int],
    weights: Sequence[float] = (),
    alpha: float = 0.1,
    entropy_threshold: float | None = None,
    final_norm: bool = True,
) -> torch.Tensor:
    """Teacher-forced contrastive log-probabilities of a whole sequence (echo scoring), as DoLa
    scores TruthfulQA answers: one forward pass over ``ids``; for every position ``t`` the step above
    on ``hidden_states[j][t]`` (per-position layer choice for DoLa), then ``log_softmax`` of the
    scores ``F`` over the plausible set (``-inf`` outside it). Positions held back by the entropy gate
    get the model's own log-probabilities. Returns ``[len(ids) - 1, V]``: row ``t`` is the
    distribution of token ``t + 1``."""
    head = model.get_output_embeddings()
    norm = _final_norm(model) if final_norm else (lambda h: h)
    out = model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True)
    rows = []
    for t in range(len(ids) - 1):
        log_qn = torch.log_softmax(out.logits[0, t].float(), -1)
        qn = log_qn.exp()
        entropy = float(-(qn[qn > 0] * log_qn[qn > 0]).sum())
        if entropy_threshold is not None and entropy < entropy_threshold:
            rows.append(log_qn)
            continue
        log_q = {j: torch.log_softmax(head(norm(out.hidden_states[j][0, t])).float(), -1) for j in layers}
        scores, _ = _contrast(log_qn, log_q, method, layers, weights, alpha)
        rows.append(torch.log_softmax(scores, -1))
    return torch.stack(rows)
