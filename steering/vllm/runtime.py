"""Worker-side steering state: per-layer vector tables, per-step token tables, request plans.

One :class:`SteeringRuntime` lives on each model runner (one per worker / tensor-parallel rank;
the residual stream is replicated across TP ranks, so every rank applies the same deltas to the
same values and the ranks stay consistent). Nothing here is global: the tables are buffers of the
decoder layers themselves, which makes them inputs of the compiled graph, so in-place refreshes
between steps are seen by compiled code and by CUDA-graph replays alike.

Per step, :meth:`prepare_step` reads the step's :class:`~steering.vllm.step_plan.StepPlan` (each
request's token rows, prompt/generated split, slot entries and gate states; the runtime's
:attr:`~SteeringRuntime.planner` computes it once per step and parses each request once) and
writes ``(table row, a, b, strength)`` per table, slot and token into numpy staging arrays that are
copied to the device in bulk. Layers untouched this step and last step cost nothing. After the
pass, :meth:`finish_step` reads the probe rows, lets the plan decide its gates and sends the rows.

Head-level steering (site ``attn_heads``, :mod:`steering.vllm.heads`) uses the same machinery on
more tables: a slot plan's keys are table keys, ``layer`` for the residual site and ``num_layers +
layer`` for the heads of that layer (``o_proj``'s input).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
from steering.request import STEERING, RequestContract
from steering.spec import ResolvedOp
from steering.vllm.config import WorkerConfig
from steering.vllm.custom_op import ALL_SLOTS_ATTR, steer_hook
from steering.vllm.dynamic_rows import DynamicRows
from steering.vllm.heads import HeadSite, split_payload
from steering.vllm.probe_channel import ProbeSender
from steering.vllm.probe_readout import ProbeReadout
from steering.vllm.step_plan import POS_CODES, StepPlan, StepPlanner

log = logging.getLogger(__name__)


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


SlotPlan = dict[int, list[SlotEntry]]  # one request's steering: table key (layer; num_layers + layer for heads) -> entries


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
        self.rejected = 0
        # probes read after steering: their hooks are registered after the steering hooks
        self.readout = ProbeReadout(layers, bundles_list, max_tokens, device)
        self.sender: ProbeSender | None = None
        # the one per-request cache and per-step plan of this worker (stash and capture read it too)
        self.planner = StepPlanner(self.num_layers, self, self.readout.column)

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

    # ----------------------------------------------------------------- request slot plans
    def plan_for(self, ops: list[ResolvedOp], req_id: str = "") -> SlotPlan:
        """Turn resolved ops into per-layer slot entries; raises SpecError if they do not fit.
        (Positions, finite numbers and targets were checked by :func:`steering.request.from_wire`.)"""
        plan: SlotPlan = {}
        gates = 0
        for op in ops:
            gate = -1
            if op.gate is not None:
                if self.readout.column(op.gate.probe) is None:
                    raise SpecError(f"probe {op.gate.probe!r} is not loaded on this worker")
                gate, gates = gates, gates + 1
            pos = POS_CODES[op.positions]
            if op.site not in SITES:
                raise SpecError(f"unknown site {op.site!r}")
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

    def admit(self, req_id: str, contract: RequestContract) -> SlotPlan:
        """A new request's slot plan (its inline vectors take reserved rows first, residual and
        head vectors in their own tables); called once per request by :attr:`planner`."""
        if contract.vectors:
            resid, head = split_payload(contract.vectors)
            self.dynamic.acquire(req_id, resid)
            self.heads.dynamic.acquire(req_id, head)
        return self.plan_for(list(contract.steering), req_id)

    def release(self, req_id: str) -> None:
        """The request left the batch (or was refused): free its inline vector rows."""
        self.dynamic.release(req_id)
        self.heads.dynamic.release(req_id)

    # ----------------------------------------------------------------- per step
    def prepare_step(self, plan: StepPlan) -> None:
        """Fill the tables for this step's batch and choose the probe rows to read."""
        self.rejected += plan.rejected.get(STEERING, 0)
        touched: dict[int, int] = {}
        for span in plan.spans:
            st = span.state
            if st.slots is None or not span.scheduled:
                continue
            for layer, entries in st.slots.items():
                touched.setdefault(layer, 0)
                for k, ent in enumerate(entries):
                    if ent.gate >= 0 and not st.steer_gates[ent.gate].open:
                        continue
                    lo, hi = span.rows_for(ent.positions)
                    if hi <= lo:
                        continue
                    self.idx_np[layer, k, lo:hi] = ent.row
                    self.coef_np[layer, k, :, lo:hi] = ent.coef
                    touched[layer] = max(touched[layer], k + 1)
        self._flush(touched, plan.total_tokens)
        if self.readout:
            self.readout.prepare(plan)

    def finish_step(self, plan: StepPlan) -> None:
        """After the forward pass, before sampling: read the probe rows, let the plan decide its
        gates from the sampling rows' scores (steering: next step; decoding: this step), send."""
        if not self.readout:
            plan.decide({})
            return
        scores = self.readout.read()
        plan.decide(scores.sampled)
        msg = self.readout.message(scores, plan.flags)
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
