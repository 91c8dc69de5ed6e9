"""Per-request contrastive decoding specs: the ``decoding`` field and its resolved wire form.

Users write a :class:`DecodingSpec`; at the point of entry :func:`resolve_decoding` checks it
against the model and turns it into a :class:`ResolvedDecoding` (concrete layer indices, weights
normalised to sum 1, every default filled in), which travels as plain JSON in
``SamplingParams.extra_args`` and is what :func:`steering.decoding.contrastive.apply_contrast` reads.

Layer indices follow HF transformers' DoLa convention: premature layer ``k`` is the hidden state
*entering* decoder layer ``k``, i.e. ``hidden_states[k]`` of an HF forward with
``output_hidden_states=True``: ``0`` is the embedding output, ``k >= 1`` the output of decoder layer
``k - 1``. The final layer ``N = num_layers`` (the model's own next-token distribution) is what the
premature layers are contrasted with, so it is never a premature layer: valid indices are
``0 .. N - 1``. (Steering's ``layers`` count differently: steering layer ``k`` is the output of
decoder layer ``k``, i.e. premature layer ``k + 1``.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steering.errors import DecodingError, SpecError, check_layers, field_path
from steering.spec import ProbeGate, ResolvedGate, gate_from_wire, resolve_gate

if TYPE_CHECKING:
    from steering.bundle import DirectionBundle

Method = Literal["dola", "contrast", "none"]
Bucket = Literal["low", "high"]
EchoScores = Literal["logprobs", "contrast"]
DOLA, CONTRAST, NONE = "dola", "contrast", "none"
# what echo scoring writes for the prompt tokens: log_softmax of the contrast, or the raw contrast
ECHO_LOGPROBS: Final = "logprobs"
ECHO_CONTRAST: Final = "contrast"


class DecodingGate(ProbeGate):
    """Probe gate of contrastive decoding: contrast only at the steps the request's probe flags.

    Unlike a steering gate (which can only act on the *next* step), the contrast of a step is
    applied after that step's forward pass, so the gate reads the probe's score at the very
    position being decoded (same pass): the step is contrasted when the average of the last
    ``window`` scores, this one included, is below ``below`` (or above ``above``), and for
    ``hold`` further steps after that. Every decoded step has its own score, so there is no
    ``initial`` state. Prompt positions are never gated (they are not decoded).
    """


class DecodingSpec(BaseModel):
    """The ``decoding`` field of a request."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"method": "dola", "premature_layers": "high"}]},
    )
    method: Method = Field(
        description="dola: contrast with the candidate layer most distant from the final one "
        "(Jensen-Shannon divergence), chosen per step | contrast: fixed layer, or weighted fusion of "
        "several | none: plain decoding"
    )
    premature_layers: Bucket | list[int] = Field(
        default="high",
        description="'low' | 'high' (HF transformers' DoLa buckets) or explicit indices; index k is "
        "the hidden state entering decoder layer k (0 = embeddings), the final layer is never premature",
    )
    weights: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(
        default=None,
        description="contrast only: one non-negative weight per premature layer (normalised to sum "
        "1; default uniform)",
    )
    alpha: float = Field(
        default=0.1,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="adaptive plausibility constraint: only tokens with p >= alpha * max p (final "
        "layer) can be chosen; 0 switches it off (DoLa's own setting for TruthfulQA MC scoring, "
        "where no option token should score -inf)",
    )
    entropy_threshold: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="contrast only at steps where the final distribution's entropy (nats) is at "
        "least this; other steps keep the model's logits unchanged (default: every step)",
    )
    repetition_penalty: float | None = Field(
        default=None,
        ge=1,
        allow_inf_nan=False,
        description="HF-style repetition penalty on the contrasted logits of every token already in "
        "the prompt or output (DoLa's authors suggest 1.2; default: none)",
    )
    gate: DecodingGate | None = Field(
        default=None,
        description="contrast only at steps where this probe, read at the decoded position in the same "
        "forward pass, flags risk (see DecodingGate); combines with entropy_threshold (both must pass)",
    )
    echo_scores: EchoScores = Field(
        default=ECHO_LOGPROBS,
        description="echo scoring only (completions with echo and logprobs): what the prompt tokens' "
        "logprobs hold. logprobs: log_softmax of the contrast (a distribution over the plausible "
        "tokens) | contrast: the contrast score itself, log p_final - log p_premature, not normalised "
        "(DoLa's own TruthfulQA-MC scoring, post_softmax off; with alpha 0 every token has one)",
    )


@dataclass(frozen=True)
class ResolvedDecoding:
    """Canonical, hashable wire form of a decoding spec; rows with equal configs share one pass."""

    method: str
    layers: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()  # contrast only, parallel to ``layers``, summing to 1
    alpha: float = 0.1
    entropy_threshold: float | None = None
    repetition_penalty: float = 1.0
    gate: ResolvedGate | None = None
    echo_scores: str = ECHO_LOGPROBS  # what echo scoring writes for prompt tokens (prompt_contrast)

    @property
    def active(self) -> bool:
        """Whether this config changes anything (``none`` leaves the logits untouched)."""
        return self.method != NONE

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "method": self.method,
            "layers": list(self.layers),
            "weights": list(self.weights),
            "alpha": self.alpha,
            "entropy_threshold": self.entropy_threshold,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.gate is not None:  # ungated configs keep their pre-gate wire form
            d["gate"] = self.gate.to_wire()
        if self.echo_scores != ECHO_LOGPROBS:
            d["echo_scores"] = self.echo_scores
        return d

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ResolvedDecoding:
        threshold = d.get("entropy_threshold")
        return cls(
            method=str(d["method"]),
            layers=tuple(int(x) for x in d.get("layers", ())),
            weights=tuple(float(x) for x in d.get("weights", ())),
            alpha=float(d.get("alpha", 0.1)),
            entropy_threshold=None if threshold is None else float(threshold),
            repetition_penalty=float(d.get("repetition_penalty", 1.0)),
            gate=gate_from_wire(d["gate"]) if d.get("gate") is not None else None,
            echo_scores=str(d.get("echo_scores", ECHO_LOGPROBS)),
        )


def parse_decoding(raw: Any, param: str = "decoding") -> DecodingSpec:
    """Parse user JSON into a :class:`DecodingSpec`; errors (:class:`~steering.errors.DecodingError`)
    name the field (``decoding.alpha``)."""
    try:
        return DecodingSpec.model_validate(raw)
    except ValidationError as e:
        raise decoding_error(e.errors(), param) from e


def decoding_error(errors: Sequence[Mapping[str, Any]], param: str = "decoding") -> DecodingError:
    """pydantic's errors of a ``decoding`` value (``loc`` relative to it) as one error naming the
    field; the API's request validation reports a typed ``decoding`` field through this too."""
    # A union field reports one error per member; the deepest one is the most specific
    # (``[1.5]`` is a list with a bad element, not a bad bucket name).
    err = max(errors, key=lambda x: len(x["loc"]))
    # Union members appear in ``loc`` as type tags (``list[int]``); keep only the user's path.
    where = field_path(err["loc"], param)
    msg = str(err["msg"])
    if where == f"{param}.premature_layers":
        msg = "premature_layers must be 'low', 'high' or a list of layer indices"
    return DecodingError(msg, where)


def bucket_layers(bucket: str, num_layers: int, tie_word_embeddings: bool) -> list[int]:
    """HF transformers' DoLa candidate layers for ``'low'`` / ``'high'`` (transformers <= 4.55,
    ``GenerationMixin._dola_decoding``; later releases moved DoLa to the Hub).

    ``N <= 40`` layers: low = ``range(start, N // 2, 2)``, high = ``range(N // 2, N, 2)``;
    ``N > 40``: low = ``range(start, 20, 2)``, high = ``range(N - 20, N, 2)``. ``start`` is 0, or 2
    when the LM head is tied to the embeddings (early exit from the embeddings would be an identity
    map), 1 for a tied 2-layer model; when ``start == N // 2`` low is ``[start]``.
    """
    if not tie_word_embeddings:
        start = 0
    elif num_layers > 2:
        start = 2
    elif num_layers == 2:
        start = 1
    else:
        start = 0
    half = num_layers // 2
    if bucket == "low":
        if start == half:
            return [start]
        return list(range(start, half, 2)) if num_layers <= 40 else list(range(start, 20, 2))
    if bucket == "high":
        return list(range(half, num_layers, 2)) if num_layers <= 40 else list(range(num_layers - 20, num_layers, 2))
    raise ValueError(f"unknown layer bucket {bucket!r}")


def _explicit_layers(layers: list[int], num_layers: int, param: str) -> tuple[int, ...]:
    return check_layers(layers, num_layers, param, "premature_layers", DecodingError, where="",
                        note=f" (0 = embeddings; {num_layers} is the final layer, which is never premature)")


def _weights(raw: list[float] | None, layers: tuple[int, ...], param: str) -> tuple[float, ...]:
    if raw is None:
        return tuple(1.0 / len(layers) for _ in layers)
    if len(raw) != len(layers):
        raise DecodingError(
            f"got {len(raw)} weights for {len(layers)} premature layers {list(layers)}; give one per layer",
            param,
        )
    total = math.fsum(raw)
    if total <= 0:
        raise DecodingError("weights must not all be zero", param)
    return tuple(w / total for w in raw)


def resolve_decoding(
    spec: DecodingSpec,
    num_layers: int,
    *,
    tie_word_embeddings: bool,
    param: str = "decoding",
    bundles: Mapping[str, DirectionBundle] | None = None,
) -> ResolvedDecoding:
    """Concrete layers and weights for ``spec`` on a model with ``num_layers`` decoder layers.

    ``tie_word_embeddings`` (the HF config field) moves the start of the ``'low'`` bucket as HF does.
    ``bundles``: the loaded bundles, against which a ``gate``'s probe is checked.
    Raises :class:`~steering.errors.DecodingError` naming the field (``decoding.premature_layers``, ``decoding.weights``).
    """
    if spec.method == NONE:
        if spec.weights is not None:
            raise DecodingError("weights are only valid with method 'contrast'", f"{param}.weights")
        if spec.gate is not None:
            raise DecodingError("a gate needs method 'dola' or 'contrast'", f"{param}.gate")
        return ResolvedDecoding(method=NONE)
    if isinstance(spec.premature_layers, str):
        layers = tuple(bucket_layers(spec.premature_layers, num_layers, tie_word_embeddings))
    else:
        layers = _explicit_layers(spec.premature_layers, num_layers, f"{param}.premature_layers")
    weights: tuple[float, ...] = ()
    if spec.method == CONTRAST:
        weights = _weights(spec.weights, layers, f"{param}.weights")
    elif spec.weights is not None:
        raise DecodingError(
            "weights are only valid with method 'contrast' (dola picks one layer per step)",
            f"{param}.weights",
        )
    return ResolvedDecoding(
        method=spec.method,
        layers=layers,
        weights=weights,
        alpha=spec.alpha,
        entropy_threshold=spec.entropy_threshold,
        repetition_penalty=1.0 if spec.repetition_penalty is None else spec.repetition_penalty,
        gate=None if spec.gate is None else _gate(spec.gate, bundles or {}, f"{param}.gate"),
        echo_scores=spec.echo_scores,
    )


def _gate(gate: DecodingGate, bundles: Mapping[str, DirectionBundle], param: str) -> ResolvedGate:
    try:
        return resolve_gate(gate, bundles, param)
    except SpecError as e:
        raise DecodingError(str(e), e.param) from e
