"""Request and response models of the OpenAI-compatible API, with truthsteer's extensions.

Validation lives here (types, ranges, unknown fields rejected); checks that need the loaded model
or bundles (direction names, layers) happen in ``serving.py`` through ``steering.spec.resolve`` and
``steering.request``. A request model turns itself into vLLM ``SamplingParams``
(:meth:`CompletionRequest.to_sampling_params`), carrying the truthsteer contract of
``steering/request.py`` in ``extra_args``; ``decoding`` is the typed
:class:`~steering.decoding.spec.DecodingSpec` (its errors are reported as ``invalid_decoding``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steering.bundle import DirectionBundle
from steering.decoding.spec import DecodingSpec
from steering.request import RequestContract
from steering.spec import SteeringOp

Text = Annotated[str, Field(min_length=1)]  # tokenises to no token when empty: a 400
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Req):
    include_usage: bool = False


class TextPart(_Req):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


_STEERING_DOC = (
    "truthsteer: steering operations applied in order, e.g. "
    '[{"direction": "truth", "op": "add", "strength": 4.0, "layers": {"start": 10, "end": 16}}]'
)
_PROBES_DOC = (
    'truthsteer: probes to score every generated token with (names, or "all"). Each choice then carries '
    '"probe_scores": {"truth": {"mean", "min", "last", "tokens": [one calibrated score per generated token], '
    '"flagged"}}; stream chunks carry the scores of their tokens and the final chunk "probe_summary".'
)


class Abstain(_Req):
    """Selective answering: replace a choice whose probe summary is below a threshold."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"probe": "truth", "below": 0.3, "message": "I am not confident about this."}]},
    )
    probe: str = Field(description="a loaded probe (GET /v1/directions)")
    below: float = Field(description="abstain when the reduced score of the generated tokens is below this")
    reduce: Literal["mean", "min", "last"] = "mean"
    message: str = Field(default="I am not confident enough to answer this.", max_length=2000)
    return_original: bool = Field(default=False, description="keep the generated text in abstain.original")

    @field_validator("below")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class _Common(_Req):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: str | None = None
    # vLLM's own extensions (``extra_body``), kept so that vLLM clients and benchmarks carry over
    ignore_eos: bool = Field(default=False, description="vLLM extension: keep generating past EOS up to max_tokens")
    min_tokens: int = Field(default=0, ge=0, description="vLLM extension: EOS and stop strings are ignored before "
                            "this many tokens (at most max_tokens)")
    steering: list[SteeringOp] | None = Field(default=None, description=_STEERING_DOC)
    probes: list[str] | Literal["all"] | None = Field(default=None, description=_PROBES_DOC)
    abstain: Abstain | None = Field(
        default=None,
        description='truthsteer: selective answering; abstained choices get finish_reason "abstained" (streams '
        "then send each choice whole, in its final chunk)",
    )
    decoding: DecodingSpec | None = Field(
        default=None,
        description="truthsteer: contrastive lower-layer decoding, e.g. "
        '{"method": "dola", "premature_layers": "high"} or '
        '{"method": "contrast", "premature_layers": [4, 10], "weights": [1, 2], "entropy_threshold": 2.0} '
        "(fields: method, premature_layers, weights, alpha, entropy_threshold, repetition_penalty; see "
        "docs/decoding.md)",
    )

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    prompt_param: ClassVar[str]  # the field that carries the prompt (what prompt errors name)

    def logprob_counts(self) -> tuple[int | None, int | None]:
        """``(logprobs, prompt_logprobs)`` as vLLM takes them."""
        raise NotImplementedError

    @property
    def echo_scoring(self) -> bool:
        """Echo with logprobs (completions only): the prompt tokens' logprobs are part of the answer."""
        return False

    @property
    def n_prompts(self) -> int:
        """How many prompts the request carries (each gets ``n`` choices)."""
        raise NotImplementedError

    def prompt_inputs(self, tokenizer: Any) -> list[str | list[int]]:
        """The prompts as texts or token ids, ready to tokenize (chat: the template applied)."""
        raise NotImplementedError

    def token_budget(self) -> tuple[str, int | None]:
        """``(param, requested)``: the field that limits new tokens and its value (``None``: unset)."""
        return "max_tokens", self.max_tokens

    def to_sampling_params(self, max_tokens: int, contract: RequestContract, n: int | None = None,
                           seed: int | None = None) -> Any:
        """vLLM ``SamplingParams`` of one engine request of this request (``n`` choices, ``seed``:
        default the request's own), streaming deltas; raises vLLM's ``ValueError`` on bad values."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        logprobs, prompt_logprobs = self.logprob_counts()
        return SamplingParams(
            n=self.n if n is None else n, temperature=self.temperature, top_p=self.top_p, max_tokens=max_tokens,
            stop=self.stop, seed=self.seed if seed is None else seed, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            ignore_eos=self.ignore_eos, min_tokens=self.min_tokens, extra_args=contract.extra_args(),
            output_kind=RequestOutputKind.DELTA,
        )


class CompletionRequest(_Common):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "SmolLM2-135M-Instruct",
                    "prompt": "The city of Paris is located in",
                    "max_tokens": 16,
                    "temperature": 0,
                    "steering": [{"direction": "truth", "strength": 4.0}],
                }
            ]
        },
    )
    prompt: Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    prompt_param: ClassVar[str] = "prompt"

    def logprob_counts(self) -> tuple[int | None, int | None]:
        # legacy scoring (echo + logprobs): logprobs of the prompt tokens too
        return self.logprobs, self.logprobs if self.echo and self.logprobs is not None else None

    @property
    def echo_scoring(self) -> bool:
        return self.echo and self.logprobs is not None

    @property
    def n_prompts(self) -> int:
        return len(prompt_items(self.prompt))

    def prompt_inputs(self, tokenizer: Any) -> list[str | list[int]]:
        return prompt_items(self.prompt)


class ChatCompletionRequest(_Common):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "SmolLM2-135M-Instruct",
                    "messages": [{"role": "user", "content": "Is the Great Wall visible from space?"}],
                    "max_completion_tokens": 48,
                    "steering": [{"direction": "truth", "strength": 4.0}],
                    "probes": ["truth"],
                }
            ],
            # what _top_logprobs_needs_logprobs enforces, stated in the schema
            "if": {"properties": {"top_logprobs": {"type": "integer", "minimum": 1}}, "required": ["top_logprobs"]},
            "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
        },
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    prompt_param: ClassVar[str] = "messages"

    def logprob_counts(self) -> tuple[int | None, int | None]:
        return ((self.top_logprobs or 0) if self.logprobs else None), None

    @property
    def n_prompts(self) -> int:
        return 1

    def prompt_inputs(self, tokenizer: Any) -> list[str | list[int]]:
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in self.messages]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return [list(tokenizer(text, add_special_tokens=False)["input_ids"])]

    def token_budget(self) -> tuple[str, int | None]:
        if self.max_completion_tokens:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


def prompt_items(p: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The OpenAI ``prompt`` forms as a list of single prompts (text or token ids)."""
    if isinstance(p, str):
        return [p]
    if all(isinstance(x, int) for x in p):
        return [[int(x) for x in p]]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


class ProbeScoreRequest(_Req):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "SmolLM2-135M-Instruct", "input": ["Paris is in France.", "Paris is in Japan."],
                 "probes": ["truth"], "reduce": "last"}
            ]
        },
    )
    model: str
    input: Text | Annotated[list[Text], Field(min_length=1)] = Field(description="text(s) to score; each is prefilled once, nothing is generated")
    probes: list[str] | Literal["all"] = "all"
    reduce: Literal["last", "mean"] = Field(
        default="last", description="last: score of the last token (as the probes were trained); mean: over all tokens"
    )


class ProbeScore(BaseModel):
    index: int
    object: Literal["probe_score"] = "probe_score"
    scores: dict[str, float | None]
    tokens: int


class ProbeScoreList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProbeScore]
    model: str
    reduce: str
    usage: dict[str, int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "truthsteer"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class DirectionCard(BaseModel):
    name: str
    object: Literal["direction"] = "direction"
    kind: str
    description: str
    layers: list[int]
    recommended_layers: list[int]
    recommended_strength: float
    model: str
    probe_layer: int | None
    probe_frame: dict[str, str] | None = Field(
        default=None, description="how /v1/probes/score frames a text for this probe (name, kind, template); "
        "null: the text as given")
    metrics: dict[str, float]
    live: bool = Field(default=False, description="pushed at run time (POST /v1/directions), not loaded at start-up")
    layer_stats: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="per layer (key: layer index): the bundle's norm, class means/stds and "
        "held-out probe auroc/accuracy along the direction")
    recommended_steering: list[dict[str, Any]] = Field(
        default_factory=list, description="steering ops measured to help (usable as a request's `steering` "
        "as is); the numbers behind them are in `metrics` (keys `recommended.*`)")
    recommended_steering_notes: str = ""
    heads: dict[str, Any] | None = Field(
        default=None, description="attention-head vectors for steering ops with site attn_heads: num_heads, "
        "head_dim, layers, selected (layer, head) pairs, recommended_strength, per-head validation accuracy and "
        "sigma ('layer.head' keys); null: residual directions only")

    @classmethod
    def of(cls, b: DirectionBundle, live: bool = False) -> DirectionCard:
        m, probe = b.meta, b.meta.probe
        frame = probe.frame if probe is not None and probe.frame is not None and probe.frame.kind != "raw" else None
        return cls(
            name=b.name, kind=m.kind, description=m.description, layers=m.layers,
            recommended_layers=m.recommended_layers, recommended_strength=m.recommended_strength,
            model=m.model.name, probe_layer=probe.layer if probe else None,
            probe_frame=frame.model_dump() if frame else None, metrics=m.metrics,
            layer_stats={k: st.model_dump() for k, st in m.layer_stats.items()},
            recommended_steering=m.recommended_steering, recommended_steering_notes=m.recommended_steering_notes,
            live=live, heads=m.heads.model_dump() if m.heads is not None else None,
        )


class DirectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DirectionCard]
    default_steering: list[dict[str, Any]] = Field(
        default_factory=list, description="resolved ops applied to requests without `steering` (setting default_steering)")
