"""Rows of the steering vector tables reserved at start-up for vectors that arrive later.

Every steerable layer's table (``[rows, H]``, traced into the compiled graph with a fixed shape)
holds, after row 0 (zeros) and the start-up bundles' rows, ``max_directions`` rows for the live
direction registry and then ``max_inline`` rows for requests' inline vectors. A registry slot
``r`` or inline slot ``j`` is the same row offset at every layer. Filling a row is an in-place copy
into the table: no new shapes, no recompilation.

Invariants:

* A registry slot is written only by :meth:`DynamicRows.set_direction` (an engine RPC, between
  steps); the API process never rewrites a slot that an unfinished request still references, and
  every op names the content digest it expects, so a request never runs on another vector.
* An inline slot belongs to exactly one engine request from its first scheduled step until it
  leaves the batch (:meth:`release`); the API admits at most ``max_inline`` inline vectors in
  flight, so a slot is always free when a request needs one.
* Unit vectors and norms are computed exactly as for start-up bundles
  (:meth:`steering.bundle.DirectionBundle.unit`), so the same vector steers bit-identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from steering.errors import SpecError
from steering.inline import INLINE_PREFIX, unpack

REG_PREFIX = "reg:"


def reg_ref(slot: int, digest: str) -> str:
    """Wire reference of live-registry slot ``slot`` holding the vectors with ``digest``."""
    return f"{REG_PREFIX}{slot}:{digest}"


def unit_and_norm(v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """As :meth:`DirectionBundle.unit` and the runtime's norm: float32, ``v/|v|`` (zero stays zero)."""
    n = torch.linalg.vector_norm(v)
    return (v / n if n > 0 else v), float(n)


class DynamicRows:
    def __init__(self, tables: Mapping[int, torch.Tensor], base: Mapping[int, int], max_directions: int,
                 max_inline: int, hidden_size: int) -> None:
        self.tables = dict(tables)  # layer -> table (only the layers on this worker)
        self.base = dict(base)  # layer -> first reserved row
        self.max_directions = max_directions
        self.max_inline = max_inline
        self.hidden_size = hidden_size
        self.registry: list[tuple[str, dict[int, float]] | None] = [None] * max_directions  # digest, norms
        self._free = list(range(max_inline - 1, -1, -1))
        self._inline_norms: dict[int, dict[int, float]] = {}
        self._owned: dict[str, dict[str, int]] = {}  # request -> digest -> inline slot

    @staticmethod
    def reserved(max_directions: int, max_inline: int) -> int:
        return max_directions + max_inline

    # ----------------------------------------------------------------- writing rows
    def _write(self, offset: int, vectors: Mapping[int, np.ndarray]) -> dict[int, float]:
        norms: dict[int, float] = {}
        for layer, table in self.tables.items():
            row = self.base[layer] + offset
            v = vectors.get(layer)
            if v is None:
                table[row].zero_()
                continue
            unit, norm = unit_and_norm(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)))
            table[row].copy_(self._stored(layer, unit).to(table.dtype))
            norms[layer] = norm
        return norms

    def _stored(self, layer: int, unit: torch.Tensor) -> torch.Tensor:
        """What a table row holds for ``unit`` (the whole unit vector; subclasses may shard it)."""
        return unit

    def set_direction(self, slot: int, digest: str, layers: list[int], data: bytes) -> None:
        """Fill registry slot ``slot`` with the vectors ``data`` (float32 ``[len(layers), H]``)."""
        if not 0 <= slot < self.max_directions:
            raise ValueError(f"registry slot {slot} outside [0, {self.max_directions})")
        vectors = unpack({"layers": layers, "data": data}, self.hidden_size)
        self.registry[slot] = (digest, self._write(slot, vectors))

    # ----------------------------------------------------------------- inline vectors
    def acquire(self, req_id: str, payload: Mapping[str, Any]) -> None:
        """Give each inline vector of ``req_id`` a slot and fill its rows."""
        owned = self._owned.setdefault(req_id, {})
        for key, entry in payload.items():
            if key in owned:
                continue
            if not self._free:
                raise SpecError(f"no free inline vector slot (capacity {self.max_inline})")
            vectors = unpack(entry, self.hidden_size)
            j = self._free.pop()
            owned[str(key)] = j
            self._inline_norms[j] = self._write(self.max_directions + j, vectors)

    def release(self, req_id: str) -> None:
        for j in self._owned.pop(req_id, {}).values():
            self._inline_norms.pop(j, None)
            self._free.append(j)

    @property
    def inline_in_use(self) -> int:
        return self.max_inline - len(self._free)

    # ----------------------------------------------------------------- look-up
    def row(self, ref: str, req_id: str, layer: int) -> tuple[int, float]:
        """Table row and vector norm of the reference ``ref`` at ``layer``."""
        if layer not in self.base:
            raise SpecError(f"layer {layer} is not steerable on this worker")
        if ref.startswith(REG_PREFIX):
            _, slot_s, digest = ref.split(":", 2)
            slot = int(slot_s)
            entry = self.registry[slot] if 0 <= slot < self.max_directions else None
            if entry is None or entry[0] != digest:
                raise SpecError(f"registry slot {slot} does not hold vectors {digest}")
            offset, norms = slot, entry[1]
        elif ref.startswith(INLINE_PREFIX):
            j = self._owned.get(req_id, {}).get(ref[len(INLINE_PREFIX):])
            if j is None:
                raise SpecError(f"inline vector {ref} was not sent with request {req_id}")
            offset, norms = self.max_directions + j, self._inline_norms[j]
        else:
            raise SpecError(f"unknown vector reference {ref!r}")
        if layer not in norms:
            raise SpecError(f"vector {ref} has no vector at layer {layer}")
        return self.base[layer] + offset, norms[layer]
