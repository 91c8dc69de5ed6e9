"""Direction bundles: per-layer steering vectors plus their metadata, in one safetensors file.

On-disk format (``format_version`` 1), documented in README "Direction bundles":

* tensors ``direction.{layer}`` -- float32 ``[hidden_size]``, one per entry of ``layers``. A
  direction is stored at its natural scale (e.g. mean(positive) - mean(negative) activations at
  that layer), so ``strength: 1`` moves the residual stream by one class difference.
* optional tensor ``probe.weight`` -- float32 ``[hidden_size]``, the linear probe read at
  ``probe.layer``: ``score = sigmoid(a * (w . h + bias) + b)`` with Platt calibration ``(a, b)``.
* optional tensors ``heads.{layer}`` -- float32 ``[num_heads, head_dim]``, head vectors for the
  ``attn_heads`` steering site (metadata ``heads``, :mod:`steering.heads`); a bundle with head
  vectors may have no residual ``direction`` tensors (``layers: []``).
* the safetensors header metadata key ``truthsteer`` holds the JSON :class:`BundleMetadata`.

Loading validates the file on its own (finite values, shapes, consistent layer lists, no unknown
fields) and, when a :class:`ModelInfo` is given, against the served model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from safetensors import safe_open
from safetensors.torch import save_file

from steering.chat import user_turn
from steering.errors import BundleError, field_path
from steering.heads import HEAD_TENSOR_RE, HeadMeta, validate_heads
from steering.model_info import ModelInfo

FORMAT_VERSION = 1
METADATA_KEY = "truthsteer"
_DIRECTION_RE = re.compile(r"^direction\.(\d+)$")
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
FRAME_PLACEHOLDER = "{statement}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """The model a bundle was trained on."""

    name: str
    fingerprint: str
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    architecture: str = ""

    @classmethod
    def of(cls, info: ModelInfo) -> ModelRef:
        return cls(
            name=info.name,
            fingerprint=info.fingerprint,
            hidden_size=info.hidden_size,
            num_layers=info.num_layers,
            architecture=info.architecture,
        )


class LayerStats(_Strict):
    """Statistics of the training activations projected on the unit direction at one layer."""

    norm: float = Field(ge=0)
    pos_mean: float | None = None
    neg_mean: float | None = None
    pos_std: float | None = None
    neg_std: float | None = None
    auroc: float | None = None
    accuracy: float | None = None


class Calibration(_Strict):
    """Platt scaling: ``p = sigmoid(a * logit + b)``."""

    a: float = 1.0
    b: float = 0.0


class ProbeFrame(_Strict):
    """The text a probe reads a statement in (:mod:`probes.frames`): ``raw`` (the statement),
    ``chat`` (``template`` is a user turn in the model's chat template, with the assistant's
    opening, then ``answer``: the first words of the assistant's reply, if any) or ``text``
    (``template`` is the whole text); read at the last token. Training and ``/v1/probes/score``
    both frame statements with :meth:`apply`."""

    name: str
    kind: Literal["raw", "chat", "text"]
    template: str = ""
    answer: str = Field(default="", description="chat only: the assistant's first words, read at their last token")

    @field_validator("answer")
    @classmethod
    def _chat_only(cls, v: str, info: ValidationInfo) -> str:
        if v and info.data.get("kind") != "chat":
            raise ValueError("only a chat frame has an answer prefix")
        return v

    @field_validator("template")
    @classmethod
    def _placeholder(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("kind", "raw") != "raw" and v.count(FRAME_PLACEHOLDER) != 1:
            raise ValueError(f"must contain {FRAME_PLACEHOLDER} exactly once")
        return v

    def apply(self, statement: str, tokenizer: Any = None) -> str:
        """The text whose last token the probe reads."""
        if self.kind == "raw":
            return statement
        body = self.template.replace(FRAME_PLACEHOLDER, statement.strip())
        if self.kind == "text":
            return body
        try:
            text = user_turn(body, tokenizer)
        except (AttributeError, ValueError) as e:  # no tokenizer, or one without a chat template
            raise BundleError(f"frame {self.name!r} needs a tokenizer with a chat template: {e}") from None
        return text + self.answer


class ProbeMeta(_Strict):
    layer: int = Field(ge=0)
    bias: float
    calibration: Calibration = Calibration()
    method: str = "logistic"
    threshold: float = Field(default=0.5, ge=0, le=1)
    frame: ProbeFrame | None = None  # None: the text as given (the ``raw`` frame)


class DatasetRef(_Strict):
    name: str
    path: str = ""
    license: str = ""
    rows: int | None = None


class Training(_Strict):
    method: str
    datasets: list[DatasetRef] = []
    position: str = "last"
    seed: int | None = None
    notes: str = ""


class BundleMetadata(_Strict):
    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=NAME_RE)
    kind: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="e.g. truth, sycophancy, custom")
    description: str = ""
    model: ModelRef
    layers: list[int]
    recommended_layers: list[int]
    recommended_strength: float
    layer_stats: dict[str, LayerStats] = {}
    probe: ProbeMeta | None = None
    training: Training
    metrics: dict[str, float] = {}
    created_at: str = ""
    # steering ops (a request's ``steering`` list) measured to help; validated at load like a request
    recommended_steering: list[dict[str, Any]] = []
    recommended_steering_notes: str = ""  # how they were chosen; the numbers are in ``metrics``
    heads: HeadMeta | None = None  # head vectors for the attn_heads site (tensors heads.{layer})

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {v} (this truthsteer reads {FORMAT_VERSION})")
        return v

    @field_validator("recommended_strength")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


@dataclass(frozen=True)
class DirectionBundle:
    """A named set of per-layer directions (and optionally a probe) for one model."""

    meta: BundleMetadata
    vectors: dict[int, torch.Tensor]
    probe_weight: torch.Tensor | None = None
    source: str = field(default="<memory>", compare=False)
    head_vectors: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [num_heads, head_dim]

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def hidden_size(self) -> int:
        return self.meta.model.hidden_size

    def unit(self, layer: int) -> torch.Tensor:
        v = self.vectors[layer]
        n = torch.linalg.vector_norm(v)
        return v / n if n > 0 else v

    def stats(self, layer: int) -> LayerStats:
        s = self.meta.layer_stats.get(str(layer))
        if s is None:
            return LayerStats(norm=float(torch.linalg.vector_norm(self.vectors[layer])))
        return s

    def __post_init__(self) -> None:
        _validate_contents(self.meta, self.vectors, self.probe_weight, self.source)
        if self.meta.heads is not None:
            validate_heads(self.meta.heads, self.head_vectors, self.meta.model.num_layers, self.source)
        elif self.head_vectors:
            raise _fail(self.source, "heads", "head tensors need heads metadata")


def _fail(source: str, fieldname: str, msg: str) -> BundleError:
    return BundleError(f"{source}: {fieldname}: {msg}")


def _validate_contents(
    meta: BundleMetadata,
    vectors: dict[int, torch.Tensor],
    probe_weight: torch.Tensor | None,
    source: str,
) -> None:
    hs, nl = meta.model.hidden_size, meta.model.num_layers
    if not meta.layers and meta.heads is None:
        raise _fail(source, "layers", "must list at least one layer (or carry head vectors)")
    if len(set(meta.layers)) != len(meta.layers):
        raise _fail(source, "layers", "contains duplicates")
    for layer in meta.layers:
        if not 0 <= layer < nl:
            raise _fail(source, "layers", f"layer {layer} outside [0, {nl}) of model {meta.model.name}")
    if set(vectors) != set(meta.layers):
        missing = sorted(set(meta.layers) - set(vectors))
        extra = sorted(set(vectors) - set(meta.layers))
        raise _fail(
            source,
            "tensors",
            f"direction tensors do not match metadata layers (missing {missing}, unexpected {extra})",
        )
    for layer, v in vectors.items():
        name = f"direction.{layer}"
        if v.dim() != 1 or v.shape[0] != hs:
            raise _fail(source, name, f"shape {tuple(v.shape)}, expected ({hs},)")
        if not bool(torch.isfinite(v).all()):
            raise _fail(source, name, "contains NaN or inf")
    if not meta.recommended_layers and meta.layers:
        raise _fail(source, "recommended_layers", "must list at least one layer")
    bad = sorted(set(meta.recommended_layers) - set(meta.layers))
    if bad:
        raise _fail(source, "recommended_layers", f"{bad} have no direction tensor")
    unknown_stats = sorted(set(meta.layer_stats) - {str(x) for x in meta.layers})
    if unknown_stats:
        raise _fail(source, "layer_stats", f"keys {unknown_stats} are not in layers")
    for key, st in meta.layer_stats.items():
        for fname, val in st.model_dump().items():
            if isinstance(val, float) and not math.isfinite(val):
                raise _fail(source, f"layer_stats.{key}.{fname}", "must be finite")
    if (meta.probe is None) != (probe_weight is None):
        raise _fail(source, "probe", "probe metadata and tensor probe.weight must come together")
    if meta.probe is not None and probe_weight is not None:
        if meta.probe.layer >= nl:
            raise _fail(source, "probe.layer", f"{meta.probe.layer} outside [0, {nl})")
        if probe_weight.dim() != 1 or probe_weight.shape[0] != hs:
            raise _fail(source, "probe.weight", f"shape {tuple(probe_weight.shape)}, expected ({hs},)")
        if not bool(torch.isfinite(probe_weight).all()):
            raise _fail(source, "probe.weight", "contains NaN or inf")
        nums = [meta.probe.bias, meta.probe.calibration.a, meta.probe.calibration.b]
        if not all(math.isfinite(x) for x in nums):
            raise _fail(source, "probe", "bias and calibration must be finite")


def check_compatible(bundle: DirectionBundle, model: ModelInfo, *, force: bool = False) -> None:
    """Raise :class:`BundleError` unless ``bundle`` fits ``model``.

    Hidden size and layer count must always match; a fingerprint mismatch (same shapes, other
    weights) is an error unless ``force``.
    """
    ref, src = bundle.meta.model, bundle.source
    if ref.hidden_size != model.hidden_size:
        raise _fail(src, "model.hidden_size", f"{ref.hidden_size} != served model's {model.hidden_size}")
    if ref.num_layers != model.num_layers:
        raise _fail(src, "model.num_layers", f"{ref.num_layers} != served model's {model.num_layers}")
    heads = bundle.meta.heads
    if heads is not None and model.num_heads and (heads.num_heads, heads.head_dim) != (model.num_heads, model.head_dim):
        raise _fail(src, "heads", f"{heads.num_heads} heads x {heads.head_dim} != served model's "
                    f"{model.num_heads} x {model.head_dim}")
    if not force and model.fingerprint and ref.fingerprint != model.fingerprint:
        raise _fail(
            src,
            "model.fingerprint",
            f"bundle was trained on {ref.name} ({ref.fingerprint[:12]}), served model is "
            f"{model.name} ({model.fingerprint[:12]}); pass force to load anyway",
        )


def save_bundle(bundle: DirectionBundle, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"direction.{k}": v.detach().to(torch.float32).contiguous() for k, v in bundle.vectors.items()}
    if bundle.probe_weight is not None:
        tensors["probe.weight"] = bundle.probe_weight.detach().to(torch.float32).contiguous()
    for k, t in bundle.head_vectors.items():
        tensors[f"heads.{k}"] = t.detach().to(torch.float32).contiguous()
    meta_json = bundle.meta.model_dump_json(exclude_none=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: meta_json})
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def load_bundle(
    path: str | Path, model: ModelInfo | None = None, *, force: bool = False
) -> DirectionBundle:
    """Load and validate a bundle; errors name the file and the offending field."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise BundleError(f"{src}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            raw: dict[str, torch.Tensor] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises several error types for corrupt files
        raise BundleError(f"{src}: not a readable safetensors file ({e})") from e
    if METADATA_KEY not in header:
        raise _fail(src, "metadata", f"missing header key '{METADATA_KEY}'")
    try:
        meta_obj: Any = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise _fail(src, "metadata", f"invalid JSON ({e})") from e
    try:
        meta = BundleMetadata.model_validate(meta_obj)
    except ValidationError as e:
        first = e.errors()[0]
        loc = field_path(first["loc"]) or "metadata"
        raise _fail(src, loc, first["msg"]) from e
    vectors: dict[int, torch.Tensor] = {}
    heads: dict[int, torch.Tensor] = {}
    probe_weight = None
    for key, t in raw.items():
        m, mh = _DIRECTION_RE.match(key), HEAD_TENSOR_RE.match(key)
        if m:
            vectors[int(m.group(1))] = t.to(torch.float32)
        elif mh:
            heads[int(mh.group(1))] = t.to(torch.float32)
        elif key == "probe.weight":
            probe_weight = t.to(torch.float32)
        else:
            raise _fail(src, key, "unknown tensor (expected direction.N, heads.N or probe.weight)")
    bundle = DirectionBundle(meta=meta, vectors=vectors, probe_weight=probe_weight, source=src, head_vectors=heads)
    if model is not None:
        check_compatible(bundle, model, force=force)
    return bundle


def load_directory(
    directory: str | Path, model: ModelInfo | None = None, *, force: bool = False
) -> dict[str, DirectionBundle]:
    """Load every ``*.safetensors`` bundle in ``directory``; names must be unique."""
    out: dict[str, DirectionBundle] = {}
    for p in sorted(Path(directory).glob("*.safetensors")):
        b = load_bundle(p, model, force=force)
        if b.name in out:
            raise _fail(str(p), "name", f"'{b.name}' also defined by {out[b.name].source}")
        out[b.name] = b
    return out
