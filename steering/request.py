"""The request contract: what one engine request asks of truthsteer's worker, on the wire and parsed.

Everything truthsteer needs from a request travels in ``SamplingParams.extra_args["truthsteer"]``
(:data:`EXTRA_ARGS_KEY`), a plain-JSON object with these keys (each optional):

* ``"steering"`` (:data:`STEERING`): the resolved ops, :meth:`ResolvedOp.to_wire` each;
* ``"vectors"`` (:data:`VECTORS`): inline vectors' float32 bytes for this request only;
* ``"probes"`` (:data:`PROBES`): ``{"id": <probe id chosen by the API>, "prompt": bool}``;
* ``"decoding"`` (:data:`DECODING`): :meth:`ResolvedDecoding.to_wire`;
* ``"capture"`` (:data:`CAPTURE`): ``{"id", "layers", "positions"}`` (``POST /v1/activations``).

This module is the only one that spells those keys. The API side (``server/serving.py``,
``server/scoring.py``, ``server/activations.py``) and the offline API (``steering/llm.py``) author
a :class:`RequestContract` and write it with :meth:`RequestContract.extra_args`; the worker reads
it back with :func:`from_wire` (``steering/vllm/step_plan.py``, once per request), so authoring and
engine validation cannot drift. Shared request rules (the decoding spec checked against the model,
echo scoring under ``decoding``) live here too.

Invariants: :func:`from_wire` never raises; a malformed section (a raw-vLLM caller may send
anything) is dropped and named in :attr:`RequestContract.errors`, the other sections stand. The
KV-cache salt comes from the canonical steering ops only (decoding, probes and capture leave the
KV cache unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steering.decoding.spec import (
    CONTRAST,
    DOLA,
    DecodingSpec,
    ResolvedDecoding,
    parse_decoding,
    resolve_decoding,
)
from steering.errors import DecodingError, SpecError
from steering.spec import ResolvedOp, cache_salt, wire

if TYPE_CHECKING:
    from steering.bundle import DirectionBundle

EXTRA_ARGS_KEY = "truthsteer"
STEERING, VECTORS, PROBES, DECODING, CAPTURE = "steering", "vectors", "probes", "decoding", "capture"
POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class ProbeRequest:
    """Score this request's rows under ``probe_id`` (sampling positions; with ``prompt`` every
    computed prompt position too)."""

    probe_id: str
    prompt: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.probe_id, "prompt": self.prompt}


@dataclass(frozen=True)
class CaptureRequest:
    """Capture the stream at ``layers`` (decoder-layer outputs) and absolute prompt ``positions``."""

    id: str
    layers: tuple[int, ...]
    positions: frozenset[int]

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "layers": list(self.layers), "positions": sorted(self.positions)}


@dataclass(frozen=True)
class RequestContract:
    """One engine request's truthsteer sections, parsed (worker) or to be written (API)."""

    steering: tuple[ResolvedOp, ...] = ()
    vectors: Mapping[str, Any] = field(default_factory=dict)
    probes: ProbeRequest | None = None
    decoding: ResolvedDecoding | None = None
    capture: CaptureRequest | None = None
    errors: tuple[tuple[str, str], ...] = ()  # (section, why) of sections dropped by from_wire

    @property
    def cache_salt(self) -> str | None:
        """KV-cache salt: from the canonical steering ops (``None``: share the cache freely)."""
        return cache_salt(self.steering)

    def to_wire(self) -> dict[str, Any]:
        """The ``extra_args["truthsteer"]`` object (only the sections that are set)."""
        out: dict[str, Any] = {}
        if self.steering:
            out[STEERING] = wire(self.steering)
        if self.vectors:
            out[VECTORS] = dict(self.vectors)
        if self.probes is not None:
            out[PROBES] = self.probes.to_wire()
        if self.decoding is not None:
            out[DECODING] = self.decoding.to_wire()
        if self.capture is not None:
            out[CAPTURE] = self.capture.to_wire()
        return out

    def extra_args(self, base: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """``SamplingParams.extra_args`` carrying this contract, merged over ``base`` (a caller's
        own extra args, whose truthsteer sections this contract's override); ``None`` when empty."""
        ours = self.to_wire()
        out = dict(base or {})
        if ours:
            out[EXTRA_ARGS_KEY] = {**dict(out.get(EXTRA_ARGS_KEY) or {}), **ours}
        return out or None

    def salted(self, prompt: Any) -> Any:
        """The prompt (text or prompt dict) with this contract's cache salt; unchanged without one."""
        salt = self.cache_salt
        if salt is None:
            return prompt
        out = {"prompt": prompt} if isinstance(prompt, str) else dict(prompt)
        out["cache_salt"] = salt
        return out


# ---------------------------------------------------------------------------------------- worker side
def from_wire(extra_args: Any, num_layers: int | None = None) -> RequestContract | None:
    """Parse a request's ``extra_args``; ``None`` when it carries no truthsteer object.

    ``num_layers``: the model's, against which decoding and capture layers are checked. Each
    section is parsed on its own; a malformed one is dropped and named in ``errors``."""
    ours = extra_args.get(EXTRA_ARGS_KEY) if isinstance(extra_args, Mapping) else None
    if not isinstance(ours, Mapping):
        return None
    errors: list[tuple[str, str]] = []
    parsed: dict[str, Any] = {}
    parsers = ((STEERING, steering_from_wire), (PROBES, probes_from_wire),
               (DECODING, lambda raw: decoding_from_wire(raw, num_layers)),
               (CAPTURE, lambda raw: capture_from_wire(raw, num_layers)))
    for key, parse in parsers:
        if ours.get(key) is None:
            continue
        try:
            parsed[key] = parse(ours[key])
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # SpecError is a ValueError
            errors.append((key, f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)))
    vectors = ours.get(VECTORS)
    return RequestContract(
        steering=parsed.get(STEERING, ()), vectors=vectors if isinstance(vectors, Mapping) else {},
        probes=parsed.get(PROBES), decoding=parsed.get(DECODING), capture=parsed.get(CAPTURE), errors=tuple(errors),
    )


def asks_for(extra_args: Any, key: str) -> bool:
    """Whether ``extra_args`` carry a truthsteer section ``key`` (not parsed, not validated)."""
    ours = extra_args.get(EXTRA_ARGS_KEY) if isinstance(extra_args, Mapping) else None
    return isinstance(ours, Mapping) and ours.get(key) is not None


def steering_from_wire(raw: Any) -> tuple[ResolvedOp, ...]:
    """Resolved ops from their wire form, checked for what the worker cannot check against its
    tables (positions, finite numbers, targets parallel to layers); raises on junk."""
    if not isinstance(raw, list):
        raise TypeError(f"steering must be a list, got {type(raw).__name__}")
    ops = tuple(ResolvedOp.from_wire(d) for d in raw)
    for op in ops:
        if op.positions not in POSITIONS:
            raise SpecError(f"unknown positions {op.positions!r}")
        if not all(math.isfinite(x) for x in (op.strength, *op.targets)):
            raise SpecError("strength and targets must be finite")
        if op.targets and len(op.targets) != len(op.layers):
            raise SpecError("targets must be parallel to layers")
    return ops


def probes_from_wire(raw: Any) -> ProbeRequest | None:
    """``{"id": <non-empty str>, "prompt": bool}``; anything else asks for nothing (ignored)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str) or not raw["id"]:
        return None
    return ProbeRequest(raw["id"], bool(raw.get("prompt", False)))


def decoding_from_wire(raw: Any, num_layers: int | None = None) -> ResolvedDecoding | None:
    """The active decoding config (``None``: plain decoding); raises on junk."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"decoding must be an object, got {type(raw).__name__}")
    cfg = ResolvedDecoding.from_wire(raw)
    if not cfg.active:
        return None
    if cfg.method not in (DOLA, CONTRAST) or not cfg.layers:
        raise ValueError(f"bad decoding config {dict(raw)!r}")
    bad_range = num_layers is not None and any(not 0 <= k < num_layers for k in cfg.layers)
    if bad_range or len(set(cfg.layers)) != len(cfg.layers):
        raise ValueError(f"premature layers {list(cfg.layers)} outside [0, {num_layers})")
    if cfg.method == CONTRAST and len(cfg.weights) != len(cfg.layers):
        raise ValueError("contrast needs one weight per layer")
    return cfg


def capture_from_wire(raw: Any, num_layers: int | None = None) -> CaptureRequest:
    layers = tuple(int(x) for x in raw["layers"])
    if not layers or (num_layers is not None and any(not 0 <= k < num_layers for k in layers)):
        raise ValueError(f"capture layers {list(layers)} outside [0, {num_layers})")
    return CaptureRequest(str(raw["id"]), layers, frozenset(int(p) for p in raw["positions"]))


# ---------------------------------------------------------------------------------------- API side
@dataclass(frozen=True)
class ModelFacts:
    """What a request's ``decoding`` is checked against: the served model and its bundles."""

    num_layers: int
    tie_word_embeddings: bool  # the HF config's (moves the start of DoLa's "low" bucket)
    bundles: Mapping[str, DirectionBundle]


def tie_word_embeddings(model_config: Any) -> bool:
    """A vLLM ``ModelConfig``'s ``hf_config.tie_word_embeddings`` (``False`` when unknown)."""
    return bool(getattr(getattr(model_config, "hf_config", None), "tie_word_embeddings", False))


def resolve_request_decoding(spec: DecodingSpec | Mapping[str, Any] | None, model: ModelFacts,
                             param: str = "decoding") -> ResolvedDecoding | None:
    """A request's ``decoding`` checked against the model; ``None``: plain decoding (absent or
    ``"none"``). Raises :class:`~steering.errors.DecodingError` naming the field."""
    if spec is None:
        return None
    parsed = spec if isinstance(spec, DecodingSpec) else parse_decoding(spec, param)
    cfg = resolve_decoding(parsed, model.num_layers, tie_word_embeddings=model.tie_word_embeddings,
                           param=param, bundles=model.bundles)
    return cfg if cfg.active else None


def check_prompt_contrast(dec: ResolvedDecoding, enabled: bool, param: str = "decoding") -> None:
    """Echo scoring (prompt logprobs) under ``decoding``: the contrasted prompt logprobs need the
    engine's prompt capture, and the repetition penalty (whose per-position history is not
    implemented for prompt positions) is refused. Raises :class:`DecodingError` naming the field."""
    if not enabled:
        raise DecodingError("contrasted prompt logprobs (prompt_logprobs / echo with logprobs under decoding) are "
                            "disabled on this engine (prompt_contrast=False)", param)
    if dec.repetition_penalty != 1.0:
        raise DecodingError("repetition_penalty is not supported with prompt logprobs (echo scoring) under "
                            "decoding", f"{param}.repetition_penalty")


def build(ops: Sequence[ResolvedOp] = (), *, vectors: Mapping[str, Any] | None = None,
          probes: ProbeRequest | None = None, decoding: ResolvedDecoding | None = None,
          capture: CaptureRequest | None = None) -> RequestContract:
    """The contract of one engine request from validated parts (the one builder both the server
    and :class:`~steering.llm.SteeredLLM` use)."""
    return RequestContract(tuple(ops), dict(vectors or {}), probes, decoding, capture)
