"""Worker-side steering state: per-layer vector tables, per-step token tables, request plans.

One :class:`SteeringRuntime` lives on each model runner (one per worker / tensor-parallel rank;
the residual stream is replicated across TP ranks, so every rank applies the same deltas to the
same values and the ranks stay consistent). Nothing here is global: the tables are buffers of the
decoder layers themselves, which makes them inputs of the compiled graph, so in-place refreshes
between steps are seen by compiled code and by CUDA-graph replays alike.

Per step, :meth:`prepare_step` maps each scheduled token to its request (``query_start_loc``),
looks up that request's resolved plan (from ``SamplingParams.extra_args``, parsed once per
request), and writes ``(table row, a, b, strength)`` per layer, slot and token into numpy staging
arrays that are copied to the device in bulk. Layers untouched this step and last step cost nothing.

Head-level steering (site ``attn_heads``, :mod:`steering.vllm.heads`) uses the same machinery on
more tables: a plan's keys are table keys, ``layer`` for the residual site and ``num_layers +
layer`` for the heads of that layer (``o_proj``'s input).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from steering.bundle import DirectionBundle, load_bundle
from steering.errors import SpecError
from steering.heads import ATTN_HEADS, SITES
from steering.model_info import ModelInfo
from steering.ops import coefficients
from steering.spec import EXTRA_ARGS_KEY, ResolvedGate, ResolvedOp
from steering.vllm.config import WorkerConfig
from steering.vllm.custom_op import ALL_SLOTS_ATTR, steer_hook
from steering.vllm.dynamic_rows import DynamicRows
from steering.vllm.gates import GateState
from steering.vllm.heads import HeadSite, split_payload
from steering.vllm.probe_channel import STEERED, ProbeSender
from steering.vllm.probe_readout import ProbeReadout

log = logging.getLogger(__name__)

_POS_ALL, _POS_PROMPT, _POS_GENERATED = 0, 1, 2
_POS_CODES = {"all": _POS_ALL, "prompt": _POS_PROMPT, "generated": _POS_GENERATED}


@dataclass(frozen=True)
class SlotEntry:
    row: int
    a: float
    b: float
    strength: float
    positions: int
    gate: int = -1  # index into the request's gates, -1: ungated
    coef: np.ndarray = field(init=False, repr=False, compare=False)  # [3, 1] (a, b, strength)

    def __post_init__(self) -> None:
        coef = np.array((self.a, self.b, self.strength), dtype=np.float32)[:, None]
        object.__setattr__(self, "coef", coef)


Plan = dict[int, list[SlotEntry]]  # table key (layer; num_layers + layer for heads) -> entries in slot order


@dataclass(frozen=True)
class LayerBuffers:
    """Fixed-address tensors one decoder layer's steering op reads (see ``steer_hook``)."""

    table: torch.Tensor  # [rows, H] unit vectors, row 0 zeros
    idx: torch.Tensor  # [K, max_tokens] table row per slot and token
    coef: torch.Tensor  # [K, 3, max_tokens] (a, b, strength) per slot and token
    active: torch.Tensor  # [1] int32 on CPU: slots used this step


def find_decoder_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The model's decoder-layer list (``model.model.layers`` for Llama/Qwen/Gemma)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and len(mod) == num_layers:
            return mod
    raise RuntimeError(f"truthsteer: no decoder-layer list of length {num_layers} in {type(model).__name__}")


def _is_first_rank() -> bool:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank()) == 0
    except (ImportError, AssertionError):  # no distributed state (tests)
        return True


class SteeringRuntime:
    def __init__(
        self,
        layers: nn.ModuleList,
        bundles: Iterable[DirectionBundle],
        hidden_size: int,
        max_tokens: int,
        max_ops_per_layer: int,
        device: torch.device,
        dtype: torch.dtype,
        all_slots: bool = False,
        max_directions: int = 0,
        max_inline: int = 0,
    ) -> None:
        """``all_slots``: the ops' accelerator mode on CPU too (every slot and row every step, no
        host flags read; see :mod:`steering.vllm.custom_op`). Set on every decoder layer, so the
        probe read-out and the stash hooks of these layers follow it as well."""
        self.num_layers = len(layers)
        for module in layers:
            setattr(module, ALL_SLOTS_ATTR, all_slots)
        self.k = max_ops_per_layer
        self.max_tokens = max_tokens
        # rows[layer][direction] -> row in that layer's table; norms likewise
        self.rows: list[dict[str, int]] = [{} for _ in range(self.num_layers)]
        self.norms: list[dict[str, float]] = [{} for _ in range(self.num_layers)]
        per_layer: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers)]
        bundles_list = list(bundles)
        for b in bundles_list:
            for k, v in b.vectors.items():
                self.rows[k][b.name] = len(per_layer[k]) + 1  # row 0 is the zero vector
                self.norms[k][b.name] = float(torch.linalg.vector_norm(v))
                per_layer[k].append(b.unit(k))
        self.buffers: dict[int, LayerBuffers] = {}
        self._handles: list[Any] = []
        reserved = DynamicRows.reserved(max_directions, max_inline)
        for i, module in enumerate(layers):
            if type(module).__name__ == "PPMissingLayer":  # not on this pipeline stage
                continue
            table = torch.zeros(1 + len(per_layer[i]) + reserved, hidden_size, dtype=dtype)
            if per_layer[i]:
                table[1:1 + len(per_layer[i])] = torch.stack(per_layer[i]).to(dtype)
            bufs = LayerBuffers(
                table=table.to(device),
                idx=torch.zeros(self.k, max_tokens, dtype=torch.int64, device=device),
                coef=torch.zeros(self.k, 3, max_tokens, dtype=torch.float32, device=device),
                # CPU scalar: slots in use at this layer this step (lets the CPU op skip idle layers)
                active=torch.zeros(1, dtype=torch.int32),
            )
            # registered as buffers of the layer so that the compiled graph takes them as inputs
            for name, t in (("table", bufs.table), ("idx", bufs.idx), ("coef", bufs.coef), ("active", bufs.active)):
                module.register_buffer(f"_ts_{name}", t, persistent=False)
            self._handles.append(module.register_forward_hook(steer_hook))
            self.buffers[i] = bufs
        # rows after the start-up bundles': live registry slots, then inline slots
        self.dynamic = DynamicRows({i: b.table for i, b in self.buffers.items()},
                                   {i: 1 + len(per_layer[i]) for i in self.buffers}, max_directions, max_inline,
                                   hidden_size)
        # head vectors (site attn_heads): more tables, keyed num_layers + layer
        self.heads = HeadSite(layers, bundles_list, self.k, max_tokens, device, dtype, all_slots, max_inline)
        for i, hb in self.heads.buffers.items():
            self.buffers[self.num_layers + i] = LayerBuffers(**hb)
        keys = self.num_layers * (2 if self.heads else 1)
        self.idx_np = np.zeros((keys, self.k, max_tokens), dtype=np.int64)
        self.coef_np = np.zeros((keys, self.k, 3, max_tokens), dtype=np.float32)
        self._prev_layers: set[int] = set()
        self._prev_tokens = 0
        self._plans: dict[str, Plan | None] = {}
        self._gates: dict[str, list[GateState]] = {}
        self.rejected = 0
        # probes read after steering: their hooks are registered after the steering hooks
        self.readout = ProbeReadout(layers, bundles_list, max_tokens, device)
        self.sender: ProbeSender | None = None

    # ----------------------------------------------------------------- installation
    @classmethod
    def install(cls, runner: Any, cfg: WorkerConfig) -> SteeringRuntime:
        hf = runner.model_config.hf_config
        info = ModelInfo.from_hf_config(str(runner.model_config.model), hf)  # no fingerprint: checked at entry
        bundles = [load_bundle(p, info, force=cfg.force) for p in cfg.directions]
        names = [b.name for b in bundles]
        if len(set(names)) != len(names):
            raise ValueError(f"truthsteer: duplicate direction names in {names}")
        model = runner.get_model()
        layers = find_decoder_layers(model, info.num_layers)
        rt = cls(
            layers,
            bundles,
            hidden_size=info.hidden_size,
            max_tokens=int(runner.max_num_tokens),
            max_ops_per_layer=cfg.max_ops_per_layer,
            device=runner.device,
            dtype=runner.model_config.dtype,
            all_slots=cfg.all_slots,
            max_directions=cfg.max_directions,
            max_inline=cfg.max_inline,
        )
        if rt.readout and _is_first_rank():
            rt.sender = ProbeSender()  # one sender per engine: the stream is replicated across TP ranks
        log.info(
            "truthsteer: steering op on %d layers, directions %s, %d slots x %d tokens; probes %s%s%s",
            len(rt.buffers), names, rt.k, rt.max_tokens, rt.readout.names,
            f" -> {rt.sender.address}" if rt.sender else "",
            "; all slots every step" if cfg.all_slots or runner.device.type != "cpu" else "",
        )
        return rt

    @property
    def probe_address(self) -> str | None:
        return self.sender.address if self.sender else None

    # ----------------------------------------------------------------- request plans
    def plan_for(self, ops: list[ResolvedOp], req_id: str = "") -> Plan:
        """Turn resolved ops into per-layer slot entries; raises SpecError if they do not fit."""
        plan: Plan = {}
        gates: list[ResolvedGate] = []
        for op in ops:
            gate = -1
            if op.gate is not None:
                if self.readout.column(op.gate.probe) is None:
                    raise SpecError(f"probe {op.gate.probe!r} is not loaded on this worker")
                gate = len(gates)
                gates.append(op.gate)
            pos = _POS_CODES.get(op.positions)
            if pos is None:
                raise SpecError(f"unknown positions {op.positions!r}")
            if op.site not in SITES:
                raise SpecError(f"unknown site {op.site!r}")
            if not all(math.isfinite(x) for x in (op.strength, *op.targets)):
                raise SpecError("strength and targets must be finite")
            if op.targets and len(op.targets) != len(op.layers):
                raise SpecError("targets must be parallel to layers")
            heads = op.site == ATTN_HEADS
            for j, layer in enumerate(op.layers):
                row, norm = self.heads.row(op, req_id, layer) if heads else self._row(op, req_id, layer)
                target = op.targets[j] if op.targets else None
                a, b = coefficients(op.op, norm, target)
                entries = plan.setdefault(self.num_layers + layer if heads else layer, [])
                if len(entries) >= self.k:
                    raise SpecError(f"more than {self.k} operations on layer {layer}")
                entries.append(SlotEntry(row, a, b, op.strength, pos, gate))
        return plan

    def _row(self, op: ResolvedOp, req_id: str, layer: int) -> tuple[int, float]:
        if op.vector:  # live registry or inline: reserved rows
            return self.dynamic.row(op.vector, req_id, layer)
        if layer not in self.buffers:
            raise SpecError(f"layer {layer} is not steerable on this worker")
        row = self.rows[layer].get(op.direction)
        if row is None:
            raise SpecError(f"direction {op.direction!r} has no vector at layer {layer}")
        return row, self.norms[layer][op.direction]

    def _plan(self, req_id: str, state: Any) -> Plan | None:
        if req_id in self._plans:
            return self._plans[req_id]
        plan: Plan | None = None
        params = getattr(state, "sampling_params", None)
        extra = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARGS_KEY) if params else None
        raw = extra.get("steering") if isinstance(extra, dict) else None
        if raw:
            try:
                ops = [ResolvedOp.from_wire(d) for d in raw]
                vectors = extra.get("vectors") if isinstance(extra, dict) else None
                if vectors:
                    resid, head = split_payload(vectors)
                    self.dynamic.acquire(req_id, resid)
                    self.heads.dynamic.acquire(req_id, head)
                plan = self.plan_for(ops, req_id) or None
                gated = [op.gate for op in ops if op.gate is not None]
                if plan and gated:
                    self._gates[req_id] = [GateState(g) for g in gated]
            except (SpecError, KeyError, TypeError, ValueError) as e:
                # Validated at the point of entry; a raw-vLLM caller may still send junk. Never
                # let it take the engine down: run the request unsteered and count it.
                self.rejected += 1
                self.dynamic.release(req_id)
                self.heads.dynamic.release(req_id)
                log.warning("truthsteer: ignoring invalid steering of request %s: %s", req_id, e)
        self._plans[req_id] = plan
        return plan

    # ----------------------------------------------------------------- per step
    def prepare_step(self, runner: Any, watch: Mapping[str, int] | None = None) -> None:
        """Fill the tables for this step's batch. ``watch``: more requests whose sampling row the
        probe read-out must read (decoding gates), with their flag bits known before the pass."""
        ib = runner.input_batch
        n = int(ib.num_reqs)
        req_ids: list[str] = ib.req_ids[:n]
        touched: dict[int, int] = {}
        gated: dict[str, int] = dict(watch or {})  # watched request -> flag bits of its sampling row
        total = 0
        # forget requests that left the batch, before planning new ones (frees their inline rows)
        for rid in self._plans.keys() - set(req_ids) if self._plans else ():
            del self._plans[rid]
            self._gates.pop(rid, None)
            self.dynamic.release(rid)
            self.heads.dynamic.release(rid)
        if n:
            qsl = runner.query_start_loc.np
            total = int(qsl[n])
            for i, rid in enumerate(req_ids):
                plan = self._plan(rid, runner.requests.get(rid))
                if plan is None:
                    continue
                s, e = int(qsl[i]), int(qsl[i + 1])
                if e <= s:
                    continue
                # positions s..e-1 hold sequence positions ncomp..; those < num_prompt are prompt
                n_prompt = int(ib.num_prompt_tokens[i]) - int(ib.num_computed_tokens_cpu[i])
                split = s + min(max(n_prompt, 0), e - s)
                gates = self._gates.get(rid)
                steered_last = False
                for layer, entries in plan.items():
                    touched.setdefault(layer, 0)
                    for k, ent in enumerate(entries):
                        if ent.gate >= 0 and gates is not None and not gates[ent.gate].open:
                            continue
                        lo, hi = (s, e) if ent.positions == _POS_ALL else (
                            (s, split) if ent.positions == _POS_PROMPT else (split, e)
                        )
                        if hi <= lo:
                            continue
                        steered_last = steered_last or hi == e
                        self.idx_np[layer, k, lo:hi] = ent.row
                        self.coef_np[layer, k, :, lo:hi] = ent.coef
                        touched[layer] = max(touched[layer], k + 1)
                if gates is not None:
                    gated[rid] = gated.get(rid, 0) | (STEERED if steered_last else 0)
        self._flush(touched, total)
        if self.readout:
            qsl_np = runner.query_start_loc.np if n else np.zeros(1, dtype=np.int32)
            self.readout.prepare(req_ids, runner.requests, qsl_np, ib.num_prompt_tokens, ib.num_computed_tokens_cpu,
                                 gated)

    def finish_step(self, decide: Callable[[Mapping[str, np.ndarray]], Mapping[str, int]] | None = None) -> None:
        """After the forward pass: update gates from the sampled rows' scores, send probe rows.

        ``decide`` (the decoding gates of :class:`~steering.vllm.stash.HiddenStash`) gets the same
        scores and returns flag bits for this step's rows (``CONTRASTED``)."""
        if not self.readout:
            if decide is not None:
                decide({})
            return

        def on_scores(sampled: dict[str, np.ndarray]) -> Mapping[str, int]:
            for rid, scores in sampled.items():
                for g in self._gates.get(rid, ()):
                    col = self.readout.column(g.spec.probe)
                    if col is not None:
                        g.update(float(scores[col]))
            return decide(sampled) if decide is not None else {}

        msg, _ = self.readout.collect(on_scores)
        if msg is not None and self.sender is not None:
            self.sender.send(msg)

    def _flush(self, touched: dict[int, int], total: int) -> None:
        span = max(total, self._prev_tokens)
        for k in set(touched) | self._prev_layers:
            bufs = self.buffers[k]
            if span:
                bufs.idx[:, :span].copy_(torch.from_numpy(self.idx_np[k, :, :span]))
                bufs.coef[:, :, :span].copy_(torch.from_numpy(self.coef_np[k, :, :, :span]))
            bufs.active.fill_(touched.get(k, 0))
        # clear staging so the next step starts from zeros; the device copy above already holds it
        for layer_i in touched:
            self.idx_np[layer_i, :, :total] = 0
            self.coef_np[layer_i, :, :, :total] = 0
        self._prev_layers = {x for x, k in touched.items() if k > 0}
        self._prev_tokens = total if self._prev_layers else 0
