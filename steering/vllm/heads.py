"""Worker side of the ``attn_heads`` steering site: head vector tables and the ``o_proj`` pre-hook.

The site is the input of each decoder layer's ``self_attn.o_proj`` (the concatenated per-head
attention outputs). :class:`HeadSite` installs, on every ``o_proj`` of a layer that some bundle
has head vectors for, the same fixed-address buffers the residual site uses (vector table with row
0 zeros, per-slot token tables, CPU ``active`` flag) and a forward *pre*-hook that runs the same
in-graph op, ``torch.ops.truthsteer.steer``, on the projection's input; the
:class:`~steering.vllm.runtime.SteeringRuntime` fills these tables together with its own (they are
its table keys ``num_layers + layer``), so head steering is per token and per request, mixed
freely with residual steering and unsteered rows in one batch, inside the compiled graph.

Invariants:

* Table rows hold this tensor-parallel rank's shard of each *unit* head vector (the rank's
  contiguous heads, :meth:`steering.heads.HeadGeometry.shard`) while the norm is the full vector's:
  ``add`` then moves the shard by exactly ``strength * v[shard]``, and the ranks together by
  ``strength * v``. Only ``add`` is planned here (a projection would need every rank's shard).
* The op's ``residual`` input is a fixed ``[1, 1]`` zero buffer (broadcast), so the hook allocates
  nothing per step; rows nobody steers get an exact ``+0``.
* With at least one head bundle, requests' inline head vectors (payload entries with ``"site": "attn_heads"``) fill ``max_inline``
  rows reserved after the bundles' in every head table (:class:`HeadRows`, the inline half of
  :class:`~steering.vllm.dynamic_rows.DynamicRows` with this sharding), the same vector steering
  bit-identically whether inline or from a bundle.
* The hook reshapes the input to ``[tokens, width]`` and back (vLLM passes ``[tokens, width]``,
  HF ``[batch, seq, width]``); nothing in it depends on data, so torch.compile traces it once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from steering.bundle import DirectionBundle
from steering.errors import SpecError
from steering.heads import ATTN_HEADS, HeadGeometry
from steering.spec import ResolvedOp
from steering.vllm import custom_op
from steering.vllm.custom_op import ALL_SLOTS_ATTR
from steering.vllm.dynamic_rows import DynamicRows


def find_o_proj(layer: nn.Module) -> nn.Module | None:
    """The attention output projection of a decoder layer (Llama, Qwen2, Gemma3, ...)."""
    attn = getattr(layer, "self_attn", None)
    proj = getattr(attn, "o_proj", None)
    return proj if isinstance(proj, nn.Module) else None


def geometry_of(o_proj: nn.Module, num_heads: int, head_dim: int) -> HeadGeometry:
    """This rank's view of the heads: vLLM's ``RowParallelLinear`` knows its ``tp_rank`` /
    ``tp_size``; a plain ``nn.Linear`` (HF) is one rank. Raises if the input width disagrees."""
    g = HeadGeometry(num_heads, head_dim, int(getattr(o_proj, "tp_rank", 0)), int(getattr(o_proj, "tp_size", 1)))
    width = getattr(o_proj, "input_size_per_partition", None) or getattr(o_proj, "in_features", None)
    if width is not None and int(width) != g.width:
        raise RuntimeError(f"truthsteer: o_proj takes {width} columns, {g.local_heads} heads x {head_dim} expected")
    return g


def head_pre_hook(module: nn.Module, args: Any) -> Any:
    """Forward pre-hook on ``o_proj``: steer its input (the heads' outputs) with this step's tables."""
    if not args:  # called with keywords only: nothing to steer (resolved at trace time)
        return None
    x = args[0]
    flat = x.reshape(-1, x.shape[-1])
    steered = torch.ops.truthsteer.steer(flat, module._ts_hzero, module._ts_table, module._ts_idx, module._ts_coef,
                                         module._ts_active, custom_op.all_slots_of(module))
    return (steered.reshape(x.shape), *args[1:])


class HeadRows(DynamicRows):
    """Inline head vectors: rows written as this rank's shard of the unit vector, full norm kept."""

    def __init__(self, tables: Mapping[int, torch.Tensor], base: Mapping[int, int], max_inline: int,
                 geometry: Mapping[int, HeadGeometry]) -> None:
        g = next(iter(geometry.values()), HeadGeometry(1, 1))
        super().__init__(tables, base, 0, max_inline, g.num_heads * g.head_dim)
        self.geometry = dict(geometry)

    def _stored(self, layer: int, unit: torch.Tensor) -> torch.Tensor:
        return self.geometry[layer].shard(unit)


def split_payload(vectors: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A request's inline payload as (residual entries, head entries)."""
    heads = {k: v for k, v in vectors.items() if isinstance(v, Mapping) and v.get("site") == ATTN_HEADS}
    return {k: v for k, v in vectors.items() if k not in heads}, heads


class HeadSite:
    """Head vector tables of one worker: ``rows[layer][bundle]`` and the full vectors' norms."""

    def __init__(self, layers: nn.ModuleList, bundles: Iterable[DirectionBundle], max_ops_per_layer: int,
                 max_tokens: int, device: torch.device, dtype: torch.dtype, all_slots: bool = False,
                 max_inline: int = 0) -> None:
        """With head bundles and ``max_inline``, every layer's ``o_proj`` gets tables (inline head
        vectors may name any layer); without head bundles nothing is installed."""
        with_heads = [b for b in bundles if b.meta.heads is not None]
        shapes = {(b.meta.heads.num_heads, b.meta.heads.head_dim) for b in with_heads if b.meta.heads is not None}
        if len(shapes) > 1:
            raise ValueError(f"truthsteer: bundles disagree on the heads' shape: {sorted(shapes)}")
        self.rows: dict[int, dict[str, int]] = {}
        self.norms: dict[int, dict[str, float]] = {}
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}  # layer -> LayerBuffers fields
        self._handles: list[Any] = []
        geometry: dict[int, HeadGeometry] = {}
        base: dict[int, int] = {}
        for (num_heads, head_dim) in shapes:  # at most one
            for i, layer in enumerate(layers):
                mine = [b for b in with_heads if i in b.head_vectors]
                proj = find_o_proj(layer) if mine or max_inline else None
                if proj is None:
                    continue
                geometry[i] = geometry_of(proj, num_heads, head_dim)
                base[i] = 1 + len(mine)
                self._install(i, proj, mine, geometry[i], max_inline, max_ops_per_layer, max_tokens, device, dtype,
                              all_slots)
        self.dynamic = HeadRows({i: b["table"] for i, b in self.buffers.items()}, base, max_inline, geometry)

    def _install(self, i: int, proj: nn.Module, mine: list[DirectionBundle], geo: HeadGeometry, max_inline: int,
                 max_ops_per_layer: int, max_tokens: int, device: torch.device, dtype: torch.dtype,
                 all_slots: bool) -> None:
        """Buffers and pre-hook on one layer's ``o_proj``: rows 1.. the bundles', then inline rows."""
        table = torch.zeros(1 + len(mine) + max_inline, geo.width, dtype=dtype)
        self.rows[i], self.norms[i] = {}, {}
        for r, b in enumerate(mine, start=1):
            full = b.head_vectors[i].reshape(-1).to(torch.float32)
            norm = torch.linalg.vector_norm(full)
            table[r] = geo.shard(full / norm if norm > 0 else full).to(dtype)
            self.rows[i][b.name], self.norms[i][b.name] = r, float(norm)
        bufs = {
            "table": table.to(device),
            "idx": torch.zeros(max_ops_per_layer, max_tokens, dtype=torch.int64, device=device),
            "coef": torch.zeros(max_ops_per_layer, 3, max_tokens, dtype=torch.float32, device=device),
            "active": torch.zeros(1, dtype=torch.int32),
        }
        for name, t in bufs.items():
            proj.register_buffer(f"_ts_{name}", t, persistent=False)
        proj.register_buffer("_ts_hzero", torch.zeros(1, 1, dtype=torch.float32, device=device), persistent=False)
        setattr(proj, ALL_SLOTS_ATTR, all_slots)
        self._handles.append(proj.register_forward_pre_hook(head_pre_hook))
        self.buffers[i] = bufs

    def __bool__(self) -> bool:
        return bool(self.buffers)

    def row(self, op: ResolvedOp, req_id: str, layer: int) -> tuple[int, float]:
        """Table row and full-vector norm of the op's head vector at ``layer``; SpecError otherwise."""
        if op.op != "add":
            raise SpecError(f"op {op.op!r} is not supported on site 'attn_heads'")
        if op.vector:
            return self.dynamic.row(op.vector, req_id, layer)
        direction = op.direction
        row = self.rows.get(layer, {}).get(direction)
        if row is None:
            raise SpecError(f"direction {direction!r} has no head vectors at layer {layer} on this worker")
        return row, self.norms[layer][direction]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
