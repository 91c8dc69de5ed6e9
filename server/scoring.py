"""``POST /v1/probes/score``: probe scores of texts without generating.

Each text is prefilled once (one sampled token, discarded); the probe op reads the activations
in that pass. ``reduce: "last"`` scores the text's last token (the position the probes were trained
on); ``reduce: "mean"`` averages over all its tokens, and gives the request a private cache salt
so that every position is computed rather than served from the prefix cache.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.errors import APIError, bad_request
from server.probing import select_probes
from server.protocol import ProbeScoreRequest
from server.serving import Prepared, Serving
from steering.spec import EXTRA_ARGS_KEY


def _prepare(serving: Serving, req: ProbeScoreRequest, texts: list[str], salt: str | None) -> list[Prepared]:
    prepared = []
    for i, t in enumerate(texts):
        (p,) = serving.tokenize([t], f"input[{i}]" if not isinstance(req.input, str) else "input", salt)
        if p.n_prompt >= serving.settings.max_model_len:
            raise bad_request(f"input has {p.n_prompt} tokens; this model's context is "
                              f"{serving.settings.max_model_len}", "input", "context_length_exceeded")
        prepared.append(p)
    return prepared


async def score_texts(serving: Serving, req: ProbeScoreRequest) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.utils.async_utils import merge_async_iterators

    serving.check_model(req.model)
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise bad_request("input must not be empty", "input")
    if len(texts) > serving.settings.max_probe_inputs:
        raise bad_request(f"at most {serving.settings.max_probe_inputs} inputs per request", "input")
    probes = select_probes(req.probes, serving.probes)
    receiver = serving.receiver
    if receiver is None:
        raise APIError(503, "probe scores are unavailable: the probe channel is not connected",
                       type="service_unavailable", param="probes", code="probes_unavailable")
    mean = req.reduce == "mean"
    salt = uuid.uuid4().hex if mean else None
    prepared = await serving.offload(_prepare, serving, req, texts, salt)  # tokenisation off the event loop
    base = uuid.uuid4().hex
    ids = [f"score-{base}-{i}" for i in range(len(prepared))]
    sinks = [receiver.register(pid) for pid in ids]

    async def run(i: int) -> Any:
        params = SamplingParams(max_tokens=1, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY,
                                extra_args={EXTRA_ARGS_KEY: {"probes": {"id": ids[i], "prompt": mean}}})
        try:
            async for out in serving.engine.generate(prepared[i].prompt, params, ids[i]):
                yield out
        finally:
            await serving.engine.abort(ids[i])

    try:
        async for _ in merge_async_iterators(*[run(i) for i in range(len(prepared))]):
            pass
        data = []
        for i, (p, sink) in enumerate(zip(prepared, sinks, strict=True)):
            positions = range(0, p.n_prompt) if mean else range(p.n_prompt - 1, p.n_prompt)
            await receiver.wait(sink, positions, 30.0)
            per = sink.scores(probes, positions)
            scores: dict[str, float | None] = {}
            for name, vals in per.items():
                got = [v for v in vals if v is not None]
                scores[name] = (sum(got) / len(got)) if got and len(got) == len(vals) else None
            data.append({"index": i, "object": "probe_score", "scores": scores, "tokens": p.n_prompt})
    finally:
        for pid in ids:
            receiver.unregister(pid)
    serving.metrics.prompt_tokens.inc(sum(p.n_prompt for p in prepared))
    return {"object": "list", "data": data, "model": serving.model_name, "reduce": req.reduce,
            "usage": {"prompt_tokens": sum(p.n_prompt for p in prepared), "total_tokens":
                      sum(p.n_prompt for p in prepared)}}
