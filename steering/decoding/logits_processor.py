"""The vLLM logits processor of contrastive decoding (DoLa, fixed and fused contrast, entropy gate).

vLLM builds it with the model runner (engine kwarg ``logits_processors``), before the model is
loaded; the plugin's ``load_model`` wrapper then :meth:`~ContrastiveLogitsProcessor.attach`\\ es the
runner's :class:`~steering.decoding.stash.HiddenStash` and a function mapping hidden states to logits
(the model's own final norm and LM head). It is not argmax-invariant, so vLLM applies it to the
raw float32 logits of every step, greedy or not, before temperature, top-p/top-k and the OpenAI
penalties. Returned ``logprobs`` stay the model's own (vLLM's default ``raw_logprobs`` are taken
before any logits processor).

Per step, for the rows that the step plan marked (:attr:`HiddenStash.step_configs`: a config,
sampling this step, its probe gate open) and that the entropy gate lets through, it computes the premature logits of every (row, layer) pair that is needed in
one batched LM-head call, and hands everything to :func:`steering.decoding.contrastive.apply_contrast`,
so the maths lives in one place. Every other row is left bit for bit as it came.

Per-row state comes from vLLM's ``BatchUpdate``: the prompt and live output token lists (for the
repetition penalty) of rows whose request carries a ``decoding`` section. The config of a row comes
from the step plan alone (parsed once per request).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from steering.decoding.contrastive import apply_contrast, entropy_gate, log_alpha, log_softmax
from steering.decoding.spec import CONTRAST, ResolvedDecoding
from steering.decoding.stash import HiddenStash
from steering.request import DECODING, asks_for

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)

NormFn = Callable[[torch.Tensor], torch.Tensor]  # [n, H] stream -> [n, H] after the model's final norm
HeadFn = Callable[[torch.Tensor], torch.Tensor]  # [n, H] normed -> [n, V] logits (the model's LM head)
TokenHeadFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # [q, H] normed, [q] token ids -> [q] logits


@dataclass
class RowState:
    """A batch row's token history (what the repetition penalty reads)."""

    prompt: list[int]
    output: list[int]  # vLLM's live list: always the tokens generated so far

    def history(self) -> list[int]:
        return self.prompt + self.output


class ContrastiveLogitsProcessor(LogitsProcessor):  # type: ignore[misc]
    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.rows: dict[int, RowState] = {}
        self.stash: HiddenStash | None = None
        self.norm: NormFn | None = None
        self.head: HeadFn | None = None
        self.token_head: TokenHeadFn | None = None
        self.contrasted_rows = 0  # row-steps contrasted so far (for tests and metrics)
        self.sparse_rows = 0  # of which through the sparse path

    def attach(self, stash: HiddenStash, norm: NormFn, head: HeadFn, token_head: TokenHeadFn | None = None) -> None:
        """``token_head`` (the LM head on chosen tokens only) enables the sparse path of fixed and
        fused contrasts; without it every row takes the full-vocabulary path."""
        self.stash, self.norm, self.head, self.token_head = stash, norm, head, token_head

    def is_argmax_invariant(self) -> bool:
        return False

    # ------------------------------------------------------------------ batch bookkeeping
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            if asks_for(getattr(params, "extra_args", None), DECODING):  # only such rows are ever contrasted
                self.rows[index] = RowState(list(prompt_ids or []), output_ids)
            else:
                self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                self.rows[a] = rb

    # ------------------------------------------------------------------ the step
    def _selected(self, logits: torch.Tensor) -> dict[int, ResolvedDecoding]:
        """Batch rows to contrast this step, with their configs: marked by the plan, past the
        entropy gate."""
        assert self.stash is not None
        chosen = {r: cfg for r, cfg in enumerate(self.stash.step_configs[: logits.shape[0]]) if cfg is not None}
        gated = [r for r, cfg in chosen.items() if cfg.entropy_threshold is not None]
        if gated:  # skip the LM head for rows the gate holds back (apply_contrast would keep them)
            idx = torch.tensor(gated, dtype=torch.long, device=logits.device)
            for r, lp in zip(gated, log_softmax(logits[idx]), strict=True):
                if not bool(entropy_gate(lp[None], chosen[r].entropy_threshold)[0]):
                    del chosen[r]
        return chosen

    def _history(self, r: int) -> list[int]:
        state = self.rows.get(r)
        return state.history() if state is not None else []

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows or self.stash is None or self.norm is None or self.head is None:
            return logits  # no request in the batch asks for decoding
        chosen = self._selected(logits)
        if not chosen:
            return logits
        sparse = [r for r, cfg in chosen.items() if self.token_head is not None and sparse_ok(cfg)]
        full = [r for r in chosen if r not in set(sparse)]
        if full:
            configs = [chosen[r] for r in full]
            idx = torch.tensor(full, dtype=torch.long, device=logits.device)
            premature = premature_logits(self.stash, self.norm, self.head, full, configs)
            new = apply_contrast(logits[idx], premature, configs, [self._history(r) for r in full])
            logits[idx] = new.to(logits.dtype)
        if sparse:
            assert self.token_head is not None
            idx = torch.tensor(sparse, dtype=torch.long, device=logits.device)
            configs = [chosen[r] for r in sparse]
            new = sparse_contrast(logits[idx], self.stash, self.norm, self.token_head, sparse, configs)
            logits[idx] = new.to(logits.dtype)
            self.sparse_rows += len(sparse)
        self.contrasted_rows += len(chosen)
        return logits


def _normed_pairs(stash: HiddenStash, norm: NormFn, rows: list[int], configs: list[ResolvedDecoding]
                  ) -> tuple[torch.Tensor, list[tuple[int, list[int]]]]:
    """Final-normed stashed states of every (row, layer) pair the configs read, in one tensor,
    grouped by layer: ``(states [pairs, H], [(layer, [row positions j])])``."""
    pairs: list[tuple[int, int]] = [(j, k) for j, cfg in enumerate(configs) for k in cfg.layers]
    groups = [(k, [j for j, kk in pairs if kk == k]) for k in sorted({k for _, k in pairs})]
    hs = [stash.hidden(k, torch.tensor([rows[j] for j in js], dtype=torch.long)) for k, js in groups]
    return norm(torch.cat(hs)), groups


def premature_logits(stash: HiddenStash, norm: NormFn, head: HeadFn, rows: list[int],
                     configs: list[ResolvedDecoding]) -> dict[int, torch.Tensor]:
    """LM head (after the final norm) on the stashed states of the (row, layer) pairs that the
    configs read, in ONE batched call; ``{layer: [len(rows), V]}`` (rows that do not read a layer
    hold zeros there, which :func:`apply_contrast` never reads)."""
    normed, groups = _normed_pairs(stash, norm, rows, configs)
    logits = head(normed).float()
    out: dict[int, torch.Tensor] = {}
    start = 0
    for k, js in groups:
        block = logits[start : start + len(js)]
        start += len(js)
        if len(js) == len(rows):
            out[k] = block
        else:
            full = torch.zeros(len(rows), block.shape[1], dtype=block.dtype, device=block.device)
            full[torch.tensor(js, dtype=torch.long, device=block.device)] = block
            out[k] = full
    return out


def sparse_ok(cfg: ResolvedDecoding) -> bool:
    """Whether a config can take the sparse path: a fixed or fused contrast (DoLa with a single
    candidate is a fixed contrast) without a repetition penalty, with the plausibility constraint
    on (``alpha = 0`` keeps the whole vocabulary: nothing to save; see :func:`sparse_contrast`)."""
    return (cfg.repetition_penalty == 1.0 and cfg.alpha > 0
            and (cfg.method == CONTRAST or len(cfg.layers) == 1))


def sparse_contrast(final_logits: torch.Tensor, stash: HiddenStash, norm: NormFn, token_head: TokenHeadFn,
                    rows: list[int], configs: list[ResolvedDecoding]) -> torch.Tensor:
    """Fixed / fused contrast reading the premature layers only at the plausible tokens.

    With ``z_j`` layer ``j``'s logits and ``lse_j`` their log-normaliser, the contrast on a
    plausible token is ``sum_j w_j (log q_N(x) - z_j(x) + lse_j)``. The last term is one constant
    per row: every sampler step after the logits processors (temperature, top-k/top-p/min-p,
    additive OpenAI penalties, logit bias, argmax) is invariant to adding a constant to all the
    finite logits of a row, so it is dropped, and the premature logits are needed only at the few
    plausible tokens, not over the whole vocabulary. The repetition penalty scales positive and
    negative scores differently, so it is not shift-invariant: :func:`sparse_ok` sends those rows,
    and DoLa's layer selection (which needs the full distributions for the JSD), to the full path.
    Scores equal :func:`apply_contrast`'s minus ``sum_j w_j lse_j`` per row (tested); ``-inf``
    outside the plausible set as there.
    """
    final_logp = log_softmax(final_logits)
    thresholds = torch.tensor([[log_alpha(c.alpha)] for c in configs], dtype=final_logp.dtype, device=final_logp.device)
    mask = final_logp >= final_logp.max(dim=-1, keepdim=True).values + thresholds  # plausibility_mask per row (alpha > 0)
    ri, ti = mask.nonzero(as_tuple=True)
    normed, groups = _normed_pairs(stash, norm, rows, configs)
    # pair index and weight of (row j, its i-th layer); -1 / 0 where a row has fewer layers
    width = max(len(c.layers) for c in configs)
    where = {(j, k): start + n for (k, js), start in zip(groups, _offsets(groups), strict=True)
             for n, j in enumerate(js)}
    pair = torch.full((len(configs), width), -1, dtype=torch.long)
    weight = torch.zeros(len(configs), width, dtype=torch.float32)
    for j, c in enumerate(configs):
        ws = c.weights if c.weights else (1.0,) * len(c.layers)
        for i, (k, w) in enumerate(zip(c.layers, ws, strict=True)):
            pair[j, i], weight[j, i] = where[(j, k)], w
    ri_cpu, ti_cpu = ri.cpu(), ti.cpu()
    p_idx, p_w = pair[ri_cpu], weight[ri_cpu]  # [P, width]
    valid = p_idx >= 0
    tokens = ti_cpu.unsqueeze(1).expand_as(p_idx)[valid]
    z = token_head(normed[p_idx[valid].to(normed.device)], tokens.to(normed.device)).float()
    contrib = torch.zeros(p_idx.shape, dtype=torch.float32, device=z.device)
    contrib[valid.to(z.device)] = z * p_w[valid].to(z.device)
    scores = torch.full_like(final_logp, -math.inf)
    wsum = p_w.sum(1).to(final_logp.device)
    scores[ri, ti] = wsum * final_logp[ri, ti] - contrib.sum(1).to(final_logp.device)
    return scores


def _offsets(groups: list[tuple[int, list[int]]]) -> list[int]:
    out, start = [], 0
    for _, js in groups:
        out.append(start)
        start += len(js)
    return out


def stats(runner: Any) -> dict[str, Any] | None:
    """Counters of the runner's processor and stash (``None`` without contrastive decoding)."""
    proc, stash = find_processor(runner), getattr(runner, "truthsteer_stash", None)
    if proc is None or stash is None:
        return None
    return {"contrasted_rows": proc.contrasted_rows, "sparse_rows": proc.sparse_rows,
            "sparse_path": proc.token_head is not None, "rejected": stash.rejected,
            "stash_bytes": sum(t.numel() * t.element_size() for t in stash.outs.values()),
            "prompt_rows": stash.prompt_rows, "prompt_positions": stash.prompt_positions,
            "prompt_unsupported": stash.prompt_unsupported}


def find_processor(runner: Any) -> ContrastiveLogitsProcessor | None:
    """The runner's instance (built from the engine kwarg ``logits_processors``), if any."""
    procs = getattr(getattr(runner, "input_batch", None), "logitsprocs", None)
    for p in getattr(procs, "all", ()) if procs is not None else ():
        if isinstance(p, ContrastiveLogitsProcessor):
            return p
    return None


def final_norm(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    """The norm applied to the last layer's stream before the LM head: the sibling ``norm`` of the
    decoder-layer list (``model.model.norm`` for Llama/Qwen/Gemma)."""
    for name, mod in model.named_modules():
        if mod is layers:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            norm = getattr(parent, "norm", None)
            if isinstance(norm, nn.Module):
                return norm
    raise RuntimeError(f"truthsteer: no final norm next to the decoder layers of {type(model).__name__}")


def install(runner: Any, prompt_rows: int = 0) -> HiddenStash | None:
    """Wire contrastive decoding into a loaded runner (from the plugin's ``load_model`` wrapper,
    after the steering and probe hooks, so that the stash reads the steered stream): hooks and
    buffers on every premature layer, and the runner's logits processor attached to them. Does
    nothing when the engine was built without the processor. ``prompt_rows > 0`` (the runner's
    ``max_num_tokens``) adds the stash rows of echo scoring (:mod:`steering.decoding.prompt_contrast`)."""
    proc = find_processor(runner)
    if proc is None:
        return None
    from steering.model_info import ModelInfo
    from steering.vllm.runtime import find_decoder_layers

    info = ModelInfo.from_hf_config(str(runner.model_config.model), runner.model_config.hf_config)
    model = runner.get_model()
    layers = find_decoder_layers(model, info.num_layers)
    norm = final_norm(model, layers)
    stash = HiddenStash(layers, info.hidden_size, int(runner.max_num_reqs), runner.device, runner.model_config.dtype,
                        prompt_rows)
    runtime = getattr(runner, "truthsteer", None)
    if runtime is not None:  # the step plan now accepts requests' decoding
        runtime.planner.decoding = True

    def normed(h: torch.Tensor) -> torch.Tensor:
        out = norm(h)
        if isinstance(out, tuple):  # norms that also return the residual
            out = out[0]
        return out  # type: ignore[no-any-return]

    def head(h: torch.Tensor) -> torch.Tensor:
        logits = model.compute_logits(h)
        assert logits is not None  # None only on non-last pipeline stages, which sample nothing
        return logits  # type: ignore[no-any-return]

    sparse = token_head(model)
    proc.attach(stash, normed, head, sparse)
    nbytes = sum(t.numel() * t.element_size() for t in stash.outs.values())
    log.info("truthsteer: contrastive decoding on premature layers 0..%d (%d + %d prompt rows, %.1f MB), "
             "sparse contrast path %s", len(layers) - 1, stash.max_reqs, stash.prompt_rows, nbytes / 1e6,
             "on" if sparse is not None else "off (plain LM head not found)")
    return stash


def token_head(model: nn.Module) -> TokenHeadFn | None:
    """The LM head on chosen tokens only: ``z[q] = w[token[q]] . h[q]`` with vLLM's soft cap and
    scale (elementwise, as ``LogitsProcessor.forward`` applies them). Only for a plain,
    unsharded, unquantized head in the model's dtype; ``None`` (full path) otherwise."""
    lm_head, lp = getattr(model, "lm_head", None), getattr(model, "logits_processor", None)
    weight = getattr(lm_head, "weight", None)
    if lm_head is None or lp is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    if type(getattr(lm_head, "quant_method", None)).__name__ != "UnquantizedEmbeddingMethod":
        return None
    if int(getattr(lm_head, "tp_size", 1)) != 1 or getattr(lp, "logits_as_input", False):
        return None
    if getattr(lp, "head_dtype", None) not in (None, weight.dtype) or getattr(lm_head, "bias", None) is not None:
        return None
    soft_cap, scale = getattr(lp, "soft_cap", None), float(getattr(lp, "scale", 1.0))

    def fn(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        w = weight.index_select(0, tokens)
        z = (h.to(w.dtype) * w).sum(-1)
        if soft_cap is not None:
            z = torch.tanh(z / soft_cap) * soft_cap
        if scale != 1.0:
            z = z * scale
        return z

    return fn
