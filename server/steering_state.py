"""The server's steering state beyond the start-up bundles: live registry, inline vectors, default.

:class:`SteeringState` is what :class:`~server.serving.Serving` resolves a request's ``steering``
with. It owns:

* the **live direction registry**: bundles pushed at run time (``POST /v1/directions``), each in
  one of ``max_directions`` slots reserved in the worker's vector tables at start-up
  (:mod:`steering.vllm.dynamic_rows`). A slot is written by an engine RPC before its name becomes
  visible, and a slot is reused only when no unfinished request references it: a request holds a
  :class:`Lease` on the slots it resolved against from the moment it is resolved until its last
  engine request has finished (or, for one that never ran, until its objects are dropped). A replaced or deleted
  direction therefore never changes under a running request, and since its ops carry the vectors'
  content digest, it never shares KV-cache blocks with the old one either.
* **inline vectors** (``steering[i].vector``): per request, at most ``inline_slots`` of them in
  flight over the whole server (the worker reserved that many rows); more is a 429.
* **default steering** (setting ``default_steering``): resolved once at start-up against the
  start-up bundles, applied to requests without ``steering`` (``"steering": []`` opts out).

Everything here runs on the event loop; only :meth:`SteeringState.push` awaits (the engine RPC).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import APIError
from steering.bundle import DirectionBundle
from steering.errors import SpecError
from steering.inline import InlineLimits, InlineVectors, digest
from steering.model_info import ModelInfo
from steering.spec import Limits, ResolvedOp, SteeringOp, parse_ops, resolve
from steering.vllm.dynamic_rows import REG_PREFIX, reg_ref

Rpc = Callable[..., Awaitable[Any]]


class Lease:
    """Slots and inline capacity held by one request's engine requests: released once, when the
    last holder drops it (``Serving.generate`` of each job), or when the lease is garbage (a job
    that never ran)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._fin = weakref.finalize(self, release)
        self._holders = 1

    def hold(self, holders: int) -> None:
        self._holders = holders

    def drop(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            self._fin()


@dataclass
class ResolvedSteering:
    ops: list[ResolvedOp]
    vectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # inline payload for extra_args
    lease: Lease | None = None
    default: bool = False  # the server's default_steering was applied


@dataclass(frozen=True)
class Entry:
    bundle: DirectionBundle
    slot: int
    digest: str

    @property
    def ref(self) -> str:
        return reg_ref(self.slot, self.digest)


def vector_bytes(bundle: DirectionBundle) -> tuple[list[int], bytes]:
    """A bundle's layers and float32 ``[L, H]`` bytes, as the worker RPC takes them."""
    layers = sorted(bundle.vectors)
    data = np.stack([bundle.vectors[k].float().numpy() for k in layers]).astype("<f4").tobytes()
    return layers, data


class SteeringState:
    def __init__(self, static: Mapping[str, DirectionBundle], info: ModelInfo, limits: Limits,
                 inline_limits: InlineLimits, max_directions: int, inline_slots: int,
                 default_steering: Sequence[Mapping[str, Any]] | None) -> None:
        self.static = dict(static)
        self.info = info
        self.limits = limits
        self.inline_limits = inline_limits
        self.capacity = max_directions
        self.inline_slots = inline_slots
        self.entries: dict[str, Entry] = {}
        self._refs = [0] * max_directions  # unfinished requests per slot
        self._pending: set[int] = set()
        self._inline_in_flight = 0
        self.default_ops: list[ResolvedOp] = []
        if default_steering:
            try:
                self.default_ops = resolve(parse_ops(list(default_steering), "default_steering"), self.static,
                                           info.num_layers, limits, "default_steering")
            except SpecError as e:
                raise ValueError(f"setting {e.param}: {e}") from e

    # ----------------------------------------------------------------- requests
    def bundles(self) -> dict[str, DirectionBundle]:
        return {**self.static, **{n: e.bundle for n, e in self.entries.items()}}

    def resolve(self, ops: list[SteeringOp] | None, copies: int, param: str = "steering") -> ResolvedSteering:
        """A request's steering (``None``: the server default) checked and leased for ``copies``
        engine requests; raises SpecError / APIError naming the parameter."""
        if ops is None:
            return ResolvedSteering(list(self.default_ops), default=bool(self.default_ops))
        heads = any(b.meta.heads is not None for b in self.static.values())
        inline = InlineVectors(self.info, self.inline_limits, heads=heads) if self.inline_limits.max_vectors > 0 else None
        refs = {n: e.ref for n, e in self.entries.items()}
        resolved = resolve(ops, self.bundles(), self.info.num_layers, self.limits, param, refs, inline)
        payload = inline.payload() if inline is not None else {}
        return ResolvedSteering(resolved, payload, self._lease(resolved, len(payload) * copies, param))

    def _lease(self, ops: list[ResolvedOp], inline: int, param: str) -> Lease | None:
        slots = sorted({int(op.vector.split(":")[1]) for op in ops if op.vector.startswith(REG_PREFIX)})
        if not slots and not inline:
            return None
        if self._inline_in_flight + inline > self.inline_slots:
            raise APIError(429, f"the server holds {self._inline_in_flight} of {self.inline_slots} inline vectors in "
                           f"flight; this request needs {inline} more: retry later", type="rate_limit_error",
                           param=param, code="inline_capacity")
        for s in slots:
            self._refs[s] += 1
        self._inline_in_flight += inline

        def release() -> None:
            for s in slots:
                self._refs[s] -= 1
            self._inline_in_flight -= inline

        return Lease(release)

    @property
    def inline_in_flight(self) -> int:
        return self._inline_in_flight

    # ----------------------------------------------------------------- registry
    def _free_slot(self) -> int | None:
        bound = {e.slot for e in self.entries.values()}
        for s in range(self.capacity):
            if s not in bound and s not in self._pending and self._refs[s] == 0:
                return s
        return None

    def _check_name(self, name: str, replace: bool) -> None:
        if name in self.static:
            raise APIError(409, f"'{name}' is a start-up bundle; choose another name", param="name",
                           code="direction_exists")
        if name in self.entries and not replace:
            raise APIError(409, f"direction '{name}' is already registered; set replace to swap it", param="name",
                           code="direction_exists")

    async def push(self, bundle: DirectionBundle, replace: bool, rpc: Rpc) -> Entry:
        """Register ``bundle`` (already validated against the model): write a free slot on every
        worker, then make the name resolve to it. A replaced entry's slot is reused only after the
        requests that hold it finish."""
        self._check_name(bundle.name, replace)
        if self.capacity == 0:
            raise APIError(409, "the live direction registry is disabled on this server (max_directions=0)",
                           param="name", code="registry_full")
        slot = self._free_slot()
        if slot is None:
            raise APIError(409, f"the direction registry is full ({self.capacity} slots, setting max_directions); "
                           "delete a direction first (slots of replaced or deleted directions free up when their "
                           "requests finish)", param="name", code="registry_full")
        layers, data = vector_bytes(bundle)
        key = digest({k: bundle.vectors[k].float().numpy() for k in layers})
        self._pending.add(slot)
        try:
            await rpc("truthsteer_set_direction", args=(slot, key, layers, data))
            self._check_name(bundle.name, replace)  # a concurrent push of the same name may have won
            entry = Entry(bundle, slot, key)
            self.entries[bundle.name] = entry
            return entry
        finally:
            self._pending.discard(slot)

    def remove(self, name: str) -> Entry:
        if name in self.static:
            raise APIError(409, f"'{name}' is a start-up bundle and cannot be removed", param="name",
                           code="direction_static")
        entry = self.entries.pop(name, None)
        if entry is None:
            raise APIError(404, f"no registered direction '{name}'; registered: {sorted(self.entries) or 'none'}",
                           type="not_found_error", param="name", code="direction_not_found")
        return entry
