"""Per-request steering specs: what users write, and the resolved form that travels to the worker.

Users write a list of :class:`SteeringOp` (direction, op, strength, layers, positions). At the point
of entry :func:`resolve` checks it against the loaded bundles and turns it into a canonical,
fully explicit list of :class:`ResolvedOp` (every layer listed, every default filled in). That list
is what travels in ``SamplingParams.extra_args["truthsteer"]["steering"]`` (plain JSON) and what
the KV-cache salt is derived from, so two requests share cache blocks only when their steering is
identical.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steering.bundle import DirectionBundle
from steering.errors import SpecError
from steering.ops import ADD, CLAMP

EXTRA_ARGS_KEY = "truthsteer"
Positions = Literal["all", "prompt", "generated"]
OpName = Literal["add", "ablate", "clamp"]


class LayerRange(BaseModel):
    """Half-open layer range ``[start, end)``."""

    model_config = ConfigDict(extra="forbid")
    start: int = Field(ge=0)
    end: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LayerRange:
        if self.end <= self.start:
            raise ValueError("end must be greater than start")
        return self


class SteeringOp(BaseModel):
    """One steering operation of a request."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"direction": "truth", "op": "add", "strength": 4.0}]},
    )
    direction: str = Field(description="name of a loaded direction bundle (GET /v1/directions)")
    op: OpName = Field(default="add", description="add | ablate | clamp")
    strength: float | None = Field(
        default=None,
        description="add: multiple of the direction (default: the bundle's recommended strength); "
        "ablate/clamp: fraction of the move, 0..1 (default 1)",
    )
    layers: list[int] | LayerRange | None = Field(
        default=None, description="layer list, {start, end} (end exclusive), or omitted for the bundle's recommended layers"
    )
    positions: Positions = Field(
        default="all", description="all | prompt | generated (tokens fed back after sampling)"
    )
    target: float | None = Field(
        default=None,
        description="clamp only: projection on the unit direction to clamp to "
        "(default: the bundle's positive-class mean at each layer)",
    )

    @field_validator("strength", "target")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


@dataclass(frozen=True)
class ResolvedOp:
    """Canonical wire form of one operation (JSON-serialisable, every default filled in)."""

    direction: str
    op: str
    strength: float
    layers: tuple[int, ...]
    positions: str
    targets: tuple[float, ...] = ()  # clamp only, parallel to ``layers``

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ResolvedOp:
        return cls(
            direction=str(d["direction"]),
            op=str(d["op"]),
            strength=float(d["strength"]),
            layers=tuple(int(x) for x in d["layers"]),
            positions=str(d["positions"]),
            targets=tuple(float(x) for x in d.get("targets", ())),
        )


@dataclass(frozen=True)
class Limits:
    max_ops: int = 16
    max_ops_per_layer: int = 4
    max_abs_strength: float = 64.0


def _layers_of(op: SteeringOp, bundle: DirectionBundle, num_layers: int, param: str) -> tuple[int, ...]:
    if op.layers is None:
        return tuple(bundle.meta.recommended_layers)
    if isinstance(op.layers, LayerRange):
        layers = list(range(op.layers.start, op.layers.end))
    else:
        layers = list(op.layers)
    if not layers:
        raise SpecError("layers must not be empty", param)
    if len(set(layers)) != len(layers):
        raise SpecError(f"layers {layers} contain duplicates", param)
    out_of_range = [x for x in layers if not 0 <= x < num_layers]
    if out_of_range:
        raise SpecError(f"layers {out_of_range} outside the model's [0, {num_layers})", param)
    missing = [x for x in layers if x not in bundle.vectors]
    if missing:
        raise SpecError(
            f"direction '{bundle.name}' has no vector at layers {missing} "
            f"(it has {sorted(bundle.vectors)})",
            param,
        )
    return tuple(layers)


def resolve(
    ops: Sequence[SteeringOp],
    bundles: Mapping[str, DirectionBundle],
    num_layers: int,
    limits: Limits = Limits(),
    param: str = "steering",
) -> list[ResolvedOp]:
    """Validate ``ops`` against the loaded bundles; errors name the offending parameter."""
    if len(ops) > limits.max_ops:
        raise SpecError(f"at most {limits.max_ops} steering operations per request, got {len(ops)}", param)
    out: list[ResolvedOp] = []
    per_layer: dict[int, int] = {}
    for i, op in enumerate(ops):
        p = f"{param}[{i}]"
        bundle = bundles.get(op.direction)
        if bundle is None:
            raise SpecError(
                f"unknown direction '{op.direction}'; available: {sorted(bundles) or 'none'}",
                f"{p}.direction",
            )
        layers = _layers_of(op, bundle, num_layers, f"{p}.layers")
        default = bundle.meta.recommended_strength if op.op == ADD else 1.0
        strength = default if op.strength is None else op.strength
        if abs(strength) > limits.max_abs_strength:
            raise SpecError(f"|strength| must be <= {limits.max_abs_strength}, got {strength}", f"{p}.strength")
        targets: tuple[float, ...] = ()
        if op.op == CLAMP:
            if op.target is not None:
                targets = tuple(op.target for _ in layers)
            else:
                means = [bundle.stats(x).pos_mean for x in layers]
                if any(m is None for m in means):
                    raise SpecError(
                        f"direction '{bundle.name}' records no positive-class mean at layers {list(layers)}; "
                        "give clamp a target",
                        f"{p}.target",
                    )
                targets = tuple(float(m) for m in means if m is not None)
        elif op.target is not None:
            raise SpecError("target is only valid with op 'clamp'", f"{p}.target")
        for x in layers:
            per_layer[x] = per_layer.get(x, 0) + 1
            if per_layer[x] > limits.max_ops_per_layer:
                raise SpecError(
                    f"at most {limits.max_ops_per_layer} operations may act on one layer (layer {x})", p
                )
        out.append(ResolvedOp(op.direction, op.op, float(strength), layers, op.positions, targets))
    return out


def _parse(adapter: Any, raw: Any, param: str) -> Any:
    from pydantic import ValidationError

    try:
        return adapter.validate_python(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in first["loc"])
        raise SpecError(first["msg"], f"{param}{loc}") from e


def parse_ops(raw: Any, param: str = "steering") -> list[SteeringOp]:
    """Parse user JSON (a list of dicts) into :class:`SteeringOp`, raising :class:`SpecError`."""
    from pydantic import TypeAdapter

    ops: list[SteeringOp] = _parse(TypeAdapter(list[SteeringOp]), raw, param)
    return ops


def parse_op(raw: Any, param: str) -> SteeringOp:
    """Parse one operation; errors are reported under ``param`` (e.g. ``steering[2]``)."""
    from pydantic import TypeAdapter

    op: SteeringOp = _parse(TypeAdapter(SteeringOp), raw, param)
    return op


def wire(ops: Sequence[ResolvedOp]) -> list[dict[str, Any]]:
    return [o.to_wire() for o in ops]


def cache_salt(ops: Sequence[ResolvedOp]) -> str | None:
    """KV-cache salt for a steering config; ``None`` (share freely) when there is no steering."""
    if not ops:
        return None
    blob = json.dumps(wire(ops), sort_keys=True, separators=(",", ":"))
    return "truthsteer-" + hashlib.sha256(blob.encode()).hexdigest()[:32]
