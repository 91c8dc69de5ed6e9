"""Head-level (ITI-style) steering: the ``attn_heads`` site and the head vectors of a bundle.

A steering op's ``site`` says which activation it moves:

* ``residual`` (default): the residual stream at the output of decoder layer ``k``;
* ``attn_heads``: the attention output of layer ``k`` *before* the output projection, i.e. the
  input of ``self_attn.o_proj``, ``[tokens, num_heads * head_dim]`` with head ``h`` in columns
  ``h * head_dim .. (h + 1) * head_dim``. Under tensor parallelism each rank holds a contiguous
  shard of heads (:meth:`HeadGeometry.shard`).

A bundle may carry head vectors: tensors ``heads.{layer}`` float32 ``[num_heads, head_dim]`` (zero
rows for heads that are not steered) and metadata :class:`HeadMeta` listing the selected
``(layer, head)`` pairs. Only ``add`` is defined on this site (ITI shifts head ``h`` by
``strength * sigma_h * direction_h``; the trainer stores ``sigma_h * unit direction_h``, so
``strength`` is in units of each head's standard deviation along its direction): projections for
``ablate`` / ``clamp`` would need the whole head vector, which a tensor-parallel rank never holds.

Invariants (checked by :func:`validate_heads`): every tensor has shape ``[num_heads, head_dim]`` and
finite values, tensors exist exactly for ``HeadMeta.layers``, every selected pair names such a
layer and a head in ``[0, num_heads)``, and rows of heads that are not selected are zero.
"""

from __future__ import annotations

import math
import re

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from steering.errors import BundleError, SpecError

RESIDUAL, ATTN_HEADS = "residual", "attn_heads"
SITES = (RESIDUAL, ATTN_HEADS)
HEAD_TENSOR_RE = re.compile(r"^heads\.(\d+)$")


def head_key(layer: int, head: int) -> str:
    """Key of one head in :class:`HeadMeta`'s per-head statistics: ``"layer.head"``."""
    return f"{layer}.{head}"


class HeadMeta(BaseModel):
    """Metadata of a bundle's head vectors (``heads`` in the bundle header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    layers: list[int] = Field(description="layers with a heads.{layer} tensor")
    selected: list[tuple[int, int]] = Field(description="(layer, head) pairs with a non-zero vector")
    recommended_strength: float = 1.0
    accuracy: dict[str, float] = Field(default_factory=dict, description="'layer.head' -> validation probe accuracy")
    sigma: dict[str, float] = Field(default_factory=dict, description="'layer.head' -> std of the projections")
    notes: str = ""

    @field_validator("recommended_strength")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim


def validate_heads(meta: HeadMeta, tensors: dict[int, torch.Tensor], num_layers: int, source: str) -> None:
    """Raise :class:`BundleError` naming the file and field unless the head vectors are consistent."""

    def fail(fieldname: str, msg: str) -> BundleError:
        return BundleError(f"{source}: {fieldname}: {msg}")

    if not meta.layers or len(set(meta.layers)) != len(meta.layers):
        raise fail("heads.layers", "must list at least one layer, without duplicates")
    bad_layers = [x for x in meta.layers if not 0 <= x < num_layers]
    if bad_layers:
        raise fail("heads.layers", f"layers {bad_layers} outside [0, {num_layers})")
    if set(tensors) != set(meta.layers):
        raise fail("tensors", f"head tensors {sorted(tensors)} do not match heads.layers {sorted(meta.layers)}")
    wanted: dict[int, set[int]] = {x: set() for x in meta.layers}
    for layer, head in meta.selected:
        if layer not in wanted:
            raise fail("heads.selected", f"({layer}, {head}): layer {layer} has no head tensor")
        if not 0 <= head < meta.num_heads:
            raise fail("heads.selected", f"({layer}, {head}): head outside [0, {meta.num_heads})")
        wanted[layer].add(head)
    for layer, t in tensors.items():
        name = f"heads.{layer}"
        if tuple(t.shape) != (meta.num_heads, meta.head_dim):
            raise fail(name, f"shape {tuple(t.shape)}, expected ({meta.num_heads}, {meta.head_dim})")
        if not bool(torch.isfinite(t).all()):
            raise fail(name, "contains NaN or inf")
        stray = [h for h in range(meta.num_heads) if h not in wanted[layer] and bool(t[h].ne(0).any())]
        if stray:
            raise fail(name, f"heads {stray} are not in heads.selected but have non-zero vectors")
    for key, val in (*meta.accuracy.items(), *meta.sigma.items()):
        if not math.isfinite(val):
            raise fail(f"heads.{key}", "must be finite")


class HeadGeometry:
    """How one worker sees the ``attn_heads`` site: heads, head size, and its tensor-parallel shard."""

    def __init__(self, num_heads: int, head_dim: int, rank: int = 0, world: int = 1) -> None:
        if num_heads % world:
            raise ValueError(f"{num_heads} heads do not split over {world} tensor-parallel ranks")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside [0, {world})")
        self.num_heads, self.head_dim, self.rank, self.world = num_heads, head_dim, rank, world
        self.local_heads = num_heads // world

    @property
    def width(self) -> int:
        """Columns of this rank's ``o_proj`` input."""
        return self.local_heads * self.head_dim

    def shard(self, vector: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full head vector (``[num_heads, head_dim]`` or flattened): the
        contiguous heads ``rank * local_heads .. (rank + 1) * local_heads``, flattened."""
        heads = vector.reshape(self.num_heads, self.head_dim)
        lo = self.rank * self.local_heads
        return heads[lo:lo + self.local_heads].reshape(-1)


def head_layers(op: str, requested: list[int] | None, heads: HeadMeta | None, name: str, ref: str,
                num_layers: int, p: str) -> tuple[tuple[int, ...], float]:
    """Layers and default strength of an ``attn_heads`` steering op ``p`` (``steering[i]``) on the
    bundle ``name`` (``ref``: its live-registry reference, if any); :class:`SpecError` naming the
    field to change for what this site cannot do."""
    if op != "add":
        raise SpecError(f"op '{op}' is not supported on site 'attn_heads' (only 'add')", f"{p}.op")
    if heads is None:
        raise SpecError(f"direction '{name}' has no attention-head vectors", f"{p}.site")
    if ref:
        raise SpecError(f"head vectors of live-registry direction '{name}' are not supported; load the bundle at "
                        "start-up", f"{p}.site")
    steered = sorted({layer for layer, _ in heads.selected})
    if requested is None:
        return tuple(steered), heads.recommended_strength
    if not requested or len(set(requested)) != len(requested):
        raise SpecError("layers must be a non-empty list without duplicates", f"{p}.layers")
    outside = [x for x in requested if not 0 <= x < num_layers]
    if outside:
        raise SpecError(f"layers {outside} outside the model's [0, {num_layers})", f"{p}.layers")
    missing = [x for x in requested if x not in heads.layers]
    if missing:
        raise SpecError(f"direction '{name}' has no head vectors at layers {missing} (its heads are at {steered})",
                        f"{p}.layers")
    return tuple(requested), heads.recommended_strength
