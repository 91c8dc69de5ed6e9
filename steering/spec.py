"""Per-request steering specs: what users write, and the resolved form that travels to the worker.

Users write a list of :class:`SteeringOp` (direction, op, strength, layers, positions). At the point
of entry :func:`resolve` checks it against the loaded bundles and turns it into a canonical,
fully explicit list of :class:`ResolvedOp` (every layer listed, every default filled in). That list
is what travels in ``SamplingParams.extra_args["truthsteer"]["steering"]`` (plain JSON; the keys
belong to :mod:`steering.request`) and what
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
from steering.errors import SpecError, check_layers, field_path
from steering.heads import ATTN_HEADS, RESIDUAL, head_layers
from steering.inline import INLINE_NAME, InlineVectors
from steering.ops import ADD, CLAMP

Positions = Literal["all", "prompt", "generated"]
OpName = Literal["add", "ablate", "clamp"]
Site = Literal["residual", "attn_heads"]
_ONE_SOURCE = "give exactly one of direction / vector"


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


class ProbeGate(BaseModel):
    """What a probe gate reads: a bundle's probe, a threshold on one side, smoothing and hold."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"probe": "truth", "below": 0.35, "window": 2, "hold": 4}],
            # _one_side, stated in the schema: exactly one of below / above is a number
            "oneOf": [{"properties": {"below": {"type": "number"}}, "required": ["below"]},
                      {"properties": {"above": {"type": "number"}}, "required": ["above"]}],
        },
    )
    probe: str = Field(description="name of a loaded bundle with a probe")
    below: float | None = Field(default=None, description="open while the score is below this")
    above: float | None = Field(default=None, description="open while the score is above this")
    window: int = Field(default=1, ge=1, le=64, description="average of the last `window` scores")
    hold: int = Field(default=0, ge=0, le=4096, description="once open, stay open at least this many more steps")

    @field_validator("below", "above")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _one_side(self) -> ProbeGate:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of below / above")
        return self


class Gate(ProbeGate):
    """Probe gate of a steering operation: apply it only while the request's own probe flags risk.

    After every forward pass the probe's score at the position that sampled the newest token
    (averaged over the last ``window`` such scores) decides whether the operation applies to the
    request's *next* step: it opens when the average is below ``below`` (or above ``above``), and
    once open stays open for at least ``hold`` further steps.
    """

    initial: Literal["closed", "open"] = Field(
        default="closed", description="state for the prompt and the first token, before any score exists"
    )


@dataclass(frozen=True)
class ResolvedGate:
    probe: str
    below: float | None
    above: float | None
    window: int = 1
    hold: int = 0
    initial: str = "closed"

    def fires(self, score: float) -> bool:
        return score < self.below if self.below is not None else score > self.above  # type: ignore[operator]

    @classmethod
    def of(cls, g: ProbeGate) -> ResolvedGate:
        return cls(g.probe, g.below, g.above, g.window, g.hold, g.initial if isinstance(g, Gate) else "closed")

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


class SteeringOp(BaseModel):
    """One steering operation of a request."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"direction": "truth", "op": "add", "strength": 4.0}]},
    )
    direction: str | None = Field(default=None, description="name of a loaded direction bundle (GET /v1/directions)")
    vector: str | list[float] | dict[str, str | list[float]] | None = Field(
        default=None,
        description="instead of direction: an inline vector (list of floats or base64 bytes) used at every layer "
        "of `layers`, or a mapping layer -> vector; checked for size, finiteness and norm, kept for this request only",
    )
    vector_dtype: Literal["float32", "float16"] = Field(default="float32", description="dtype of base64 vectors")
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
    gate: Gate | None = Field(default=None, description="apply only while this probe flags risk (see Gate)")
    site: Site = Field(
        default="residual",
        description="residual: the residual stream after decoder layer k; attn_heads: the attention heads' "
        "output before the output projection (o_proj's input), with the bundle's per-head vectors (op add only; "
        "strength in units of each head's std, ITI-style; default layers: the bundle's selected heads' layers)",
    )

    @field_validator("strength", "target")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SteeringOp:
        if (self.direction is None) == (self.vector is None):
            raise ValueError(_ONE_SOURCE)
        return self


@dataclass(frozen=True)
class ResolvedOp:
    """Canonical wire form of one operation (JSON-serialisable, every default filled in)."""

    direction: str
    op: str
    strength: float
    layers: tuple[int, ...]
    positions: str
    targets: tuple[float, ...] = ()  # clamp only, parallel to ``layers``
    gate: ResolvedGate | None = None
    # where the vectors live when not a start-up bundle: "reg:<slot>:<digest>" (live registry) or
    # "inline:<digest>" (the request's own); the digest puts the vectors' content into the cache salt
    vector: str = ""
    site: str = RESIDUAL  # or attn_heads (steering/heads.py)

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["targets"] = list(self.targets)
        if self.gate is None:
            del d["gate"]  # ungated ops keep their pre-gate wire form (and cache salt)
        if not self.vector:
            del d["vector"]  # start-up bundles keep their wire form (and cache salt)
        if self.site == RESIDUAL:
            del d["site"]  # residual ops keep their pre-site wire form (and cache salt)
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
            gate=gate_from_wire(d["gate"]) if d.get("gate") is not None else None,
            vector=str(d.get("vector", "")),
            site=str(d.get("site", RESIDUAL)),
        )


def gate_from_wire(g: Mapping[str, Any]) -> ResolvedGate:
    below = None if g.get("below") is None else float(g["below"])
    above = None if g.get("above") is None else float(g["above"])
    if (below is None) == (above is None):
        raise ValueError("gate needs exactly one of below / above")
    initial = str(g.get("initial", "closed"))
    if initial not in ("closed", "open"):
        raise ValueError(f"gate initial {initial!r}")
    return ResolvedGate(str(g["probe"]), below, above, max(1, int(g.get("window", 1))), max(0, int(g.get("hold", 0))),
                        initial)


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
    check_layers(layers, num_layers, param)
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
    refs: Mapping[str, str] | None = None,
    inline: InlineVectors | None = None,
) -> list[ResolvedOp]:
    """Validate ``ops`` against the loaded bundles; errors name the offending parameter.

    ``refs``: wire references of directions that are not start-up bundles (the live registry's
    ``reg:<slot>:<digest>``); ``inline``: collects the request's inline vectors (``None``: refused)."""
    if len(ops) > limits.max_ops:
        raise SpecError(f"at most {limits.max_ops} steering operations per request, got {len(ops)}", param)
    out: list[ResolvedOp] = []
    per_layer: dict[tuple[str, int], int] = {}
    for i, op in enumerate(ops):
        p = f"{param}[{i}]"
        bundle, name, ref = _source(op, bundles, refs or {}, inline, p)
        if op.site == ATTN_HEADS:
            layers, default = head_layers(op.op, _requested(op), bundle.meta.heads, bundle.name,
                                          "" if op.vector is not None else ref, num_layers, p)
        else:
            if not bundle.meta.layers:
                raise SpecError(f"direction '{bundle.name}' has attention-head vectors only; use site 'attn_heads'",
                                f"{p}.site")
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
            per_layer[op.site, x] = per_layer.get((op.site, x), 0) + 1
            if per_layer[op.site, x] > limits.max_ops_per_layer:
                raise SpecError(
                    f"at most {limits.max_ops_per_layer} operations may act on one layer (layer {x})", p
                )
        gate = None if op.gate is None else resolve_gate(op.gate, bundles, f"{p}.gate")
        out.append(ResolvedOp(name, op.op, float(strength), layers, op.positions, targets, gate, ref, op.site))
    return out


def _source(op: SteeringOp, bundles: Mapping[str, DirectionBundle], refs: Mapping[str, str],
            inline: InlineVectors | None, p: str) -> tuple[DirectionBundle, str, str]:
    """The bundle an op reads, its name on the wire, and its vector reference."""
    if op.vector is not None:
        if inline is None:
            raise SpecError("inline vectors are not accepted here", f"{p}.vector")
        bundle, ref = inline.add(op.vector, op.vector_dtype, _requested(op), f"{p}.vector", op.site)
        return bundle, INLINE_NAME, ref
    name = op.direction or ""
    found = bundles.get(name)
    if found is None:
        raise SpecError(f"unknown direction '{name}'; available: {sorted(bundles) or 'none'}", f"{p}.direction")
    return found, name, refs.get(name, "")


def _requested(op: SteeringOp) -> list[int] | None:
    """The op's ``layers`` as a list (``None`` when omitted)."""
    if isinstance(op.layers, LayerRange):
        return list(range(op.layers.start, op.layers.end))
    return None if op.layers is None else list(op.layers)


def resolve_gate(gate: ProbeGate, bundles: Mapping[str, DirectionBundle], param: str) -> ResolvedGate:
    """Check that the gate's probe is loaded; errors name ``{param}.probe``."""
    pb = bundles.get(gate.probe)
    if pb is None or pb.meta.probe is None:
        have = sorted(n for n, b in bundles.items() if b.meta.probe is not None)
        raise SpecError(f"unknown probe '{gate.probe}'; probes: {have or 'none'}", f"{param}.probe")
    return ResolvedGate.of(gate)


def _parse(adapter: Any, raw: Any, param: str) -> Any:
    from pydantic import ValidationError

    try:
        return adapter.validate_python(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = field_path(first["loc"], param)
        if _ONE_SOURCE in first["msg"]:  # an op-level check: name the field most writers forgot
            where += ".direction"
        raise SpecError(first["msg"], where) from e


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
