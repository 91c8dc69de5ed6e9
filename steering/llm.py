"""Offline Python API: a vLLM ``LLM`` with per-request steering.

>>> from steering import SteeredLLM
>>> llm = SteeredLLM()                         # bundled default model + shipped directions
>>> outs = llm.generate(["The sky is"], steering=[{"direction": "truth", "strength": 4}])

``steering`` is one spec for every prompt or a list with one spec (or ``None``) per prompt; a spec
is a list of :class:`~steering.spec.SteeringOp` (or dicts, or ``"truth:+4"`` shorthands). Specs are
validated here, before anything reaches the engine, and attached through the request contract the
server uses too (:mod:`steering.request`: one builder, one set of rules).

``decoding`` (contrastive lower-layer decoding, see docs/decoding.md) is likewise one spec for
every prompt or a list with one (or ``None``) per prompt; a spec is a
:class:`~steering.decoding.spec.DecodingSpec` or its dict, e.g. ``{"method": "dola"}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from steering.decoding.spec import DecodingSpec, ResolvedDecoding
from steering.engine import EngineOptions, PreparedEngine, prepare
from steering.errors import DecodingError, SpecError
from steering.request import (
    ModelFacts,
    build,
    check_prompt_contrast,
    resolve_request_decoding,
    tie_word_embeddings,
)
from steering.spec import Limits, ResolvedOp, SteeringOp, parse_op, resolve

OpLike = SteeringOp | dict[str, Any] | str
Spec = Sequence[OpLike] | None
DecodingLike = DecodingSpec | dict[str, Any] | None

_SHORT = re.compile(
    r"^(?P<dir>[A-Za-z0-9][A-Za-z0-9_.-]*):"
    r"(?:(?P<op>ablate|clamp)|(?P<s>[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?))"
    r"(?:@(?P<lo>\d+)(?:-(?P<hi>\d+))?)?$"
)


def parse_shorthand(text: str) -> SteeringOp:
    """``truth:+4`` (add), ``truth:-2@10-14`` (layers 10..14 inclusive), ``truth:ablate@12``."""
    m = _SHORT.match(text.strip())
    if not m:
        raise SpecError(
            f"cannot parse steering shorthand {text!r}; use NAME:+STRENGTH[@L[-L2]] or NAME:ablate|clamp[@L[-L2]]",
            "steer",
        )
    layers: list[int] | None = None
    if m.group("lo") is not None:
        lo = int(m.group("lo"))
        hi = int(m.group("hi")) if m.group("hi") is not None else lo
        layers = list(range(lo, hi + 1))
    if m.group("op") == "ablate":
        return SteeringOp(direction=m.group("dir"), op="ablate", layers=layers)
    if m.group("op") == "clamp":
        return SteeringOp(direction=m.group("dir"), op="clamp", layers=layers)
    return SteeringOp(direction=m.group("dir"), op="add", strength=float(m.group("s")), layers=layers)


def to_ops(spec: Spec, param: str = "steering") -> list[SteeringOp]:
    if not spec:
        return []
    if isinstance(spec, str):
        raise SpecError("a steering spec is a list of operations, not a string", param)
    out: list[SteeringOp] = []
    for i, item in enumerate(spec):
        if isinstance(item, SteeringOp):
            out.append(item)
        elif isinstance(item, str):
            out.append(parse_shorthand(item))
        else:
            out.append(parse_op(item, f"{param}[{i}]"))
    return out


class SteeredLLM:
    """A vLLM engine with truthsteer's worker plugin active."""

    def __init__(self, model: str | None = None, limits: Limits = Limits(), **options: Any) -> None:
        from vllm import LLM

        self.options = EngineOptions(model=model, **options)
        self.prepared: PreparedEngine = prepare(self.options)
        self.limits = limits
        self.llm = LLM(**self.prepared.engine_kwargs)

    @property
    def bundles(self) -> dict[str, Any]:
        return dict(self.prepared.bundles)

    def resolve(self, spec: Spec, param: str = "steering") -> list[ResolvedOp]:
        return resolve(to_ops(spec, param), self.prepared.bundles, self.prepared.info.num_layers, self.limits, param)

    @property
    def model_facts(self) -> ModelFacts:
        """What a request's ``decoding`` is checked against (layers, tied embeddings, bundles)."""
        return ModelFacts(self.prepared.info.num_layers, tie_word_embeddings(self.llm.llm_engine.model_config),
                          self.prepared.bundles)

    def resolve_decoding(self, spec: DecodingLike, param: str = "decoding") -> ResolvedDecoding | None:
        """Validate a decoding spec against the model; ``None`` for plain decoding."""
        return resolve_request_decoding(spec, self.model_facts, param)

    def build_request(self, prompt: Any, params: Any, spec: Spec, param: str = "steering",
                      decoding: DecodingLike = None, decoding_param: str = "decoding") -> tuple[Any, Any]:
        """Attach validated specs to one prompt: ``(prompt with cache salt, sampling params)``.

        Contrastive decoding does not change the KV cache, so it needs no cache salt.
        """
        ops = self.resolve(spec, param)
        dec = self.resolve_decoding(decoding, decoding_param)
        if dec is not None and getattr(params, "prompt_logprobs", None) is not None:
            check_prompt_contrast(dec, self.options.prompt_contrast, decoding_param)
        if not ops and dec is None:
            return prompt, params
        contract = build(ops, decoding=dec)
        p = params.clone()
        p.extra_args = contract.extra_args(p.extra_args)
        return contract.salted(prompt), p

    def generate(
        self,
        prompts: str | Sequence[Any],
        sampling_params: Any = None,
        steering: Spec | Sequence[Spec] = None,
        use_tqdm: bool = False,
        decoding: DecodingLike | Sequence[DecodingLike] = None,
    ) -> list[Any]:
        from vllm import SamplingParams

        plist = [prompts] if isinstance(prompts, str) else list(prompts)
        params = sampling_params or SamplingParams()
        per_prompt = _per_prompt(steering, len(plist))
        per_decoding = _per_prompt_decoding(decoding, len(plist))
        reqs = [
            self.build_request(p, params, s, f"steering[{i}]", d, f"decoding[{i}]")
            for i, (p, s, d) in enumerate(zip(plist, per_prompt, per_decoding, strict=True))
        ]
        return list(self.llm.generate([r[0] for r in reqs], [r[1] for r in reqs], use_tqdm=use_tqdm))


def _per_prompt(steering: Spec | Sequence[Spec], n: int) -> list[Spec]:
    if steering is None:
        return [None] * n
    items = list(steering)
    if items and all(x is None or isinstance(x, (list, tuple)) for x in items):
        if len(items) != n:
            raise SpecError(f"got {len(items)} steering specs for {n} prompts", "steering")
        return items  # type: ignore[return-value]
    return [items] * n  # type: ignore[list-item]


def _per_prompt_decoding(decoding: DecodingLike | Sequence[DecodingLike], n: int) -> list[DecodingLike]:
    if decoding is None or isinstance(decoding, (DecodingSpec, dict)):
        return [decoding] * n
    items = list(decoding)
    if len(items) != n:
        raise DecodingError(f"got {len(items)} decoding specs for {n} prompts", "decoding")
    return items
