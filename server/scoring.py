"""``POST /v1/probes/score``: probe scores of texts without generating.

Each text is prefilled once (one sampled token, discarded); the probe op reads the activations
in that pass. ``reduce: "last"`` scores the text's last token (the position the probes were trained
on); ``reduce: "mean"`` averages over all its tokens, and gives the request a private cache salt
so that every position is computed rather than served from the prefix cache.

A probe trained in a reading frame (``probe.frame`` in its bundle, e.g. a chat turn asking whether
the statement is true) scores ``reduce: "last"`` inside that same frame: the text is framed as in
training and the frame's last token is read. Texts are prefilled once per distinct frame among the
requested probes. ``reduce: "mean"`` averages over the text's own tokens, unframed.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.errors import APIError, bad_request
from server.probing import select_probes
from server.protocol import ProbeScoreRequest
from server.serving import Serving, TokenizedPrompt
from steering.bundle import ProbeFrame
from steering.request import ProbeRequest, build

Job = tuple[int, ProbeFrame | None, TokenizedPrompt]  # (text index, frame, the prompt to prefill)


def _prepare(serving: Serving, req: ProbeScoreRequest, texts: list[str], salt: str | None,
             frames: dict[ProbeFrame | None, list[str]]) -> tuple[list[TokenizedPrompt], list[Job]]:
    """Tokenise the texts (and their framings): CPU work, run off the event loop."""
    raw: list[TokenizedPrompt] = []
    for i, t in enumerate(texts):
        (p,) = serving.tokenize([t], f"input[{i}]" if not isinstance(req.input, str) else "input", salt)
        raw.append(p)
    jobs: list[Job] = []
    for frame in frames:
        for i, t in enumerate(texts):
            p = raw[i] if frame is None else serving.tokenize([frame.apply(t, serving.tokenizer)], "input", salt)[0]
            if p.n_prompt >= serving.settings.max_model_len:
                raise bad_request(f"input has {p.n_prompt} tokens; this model's context is "
                                  f"{serving.settings.max_model_len}", "input", "context_length_exceeded")
            jobs.append((i, frame, p))
    return raw, jobs


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
    # one prefill per (frame, text); each probe reads the prefill of its own frame
    frames: dict[ProbeFrame | None, list[str]] = {}
    for name in probes:
        frames.setdefault(None if mean else serving.probes[name].frame, []).append(name)
    raw, jobs = await serving.offload(_prepare, serving, req, texts, salt, frames)  # tokenisation off the loop
    base = uuid.uuid4().hex
    ids = [f"score-{base}-{j}" for j in range(len(jobs))]
    sinks = [receiver.register(pid) for pid in ids]

    async def run(j: int) -> Any:
        params = SamplingParams(max_tokens=1, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY,
                                extra_args=build(probes=ProbeRequest(ids[j], prompt=mean)).extra_args())
        try:
            async for out in serving.engine.generate(jobs[j][2].prompt, params, ids[j]):
                yield out
        finally:
            await serving.engine.abort(ids[j])

    try:
        async for _ in merge_async_iterators(*[run(j) for j in range(len(jobs))]):
            pass
        scores: list[dict[str, float | None]] = [{} for _ in texts]
        for (i, frame, p), sink in zip(jobs, sinks, strict=True):
            positions = range(0, p.n_prompt) if mean else range(p.n_prompt - 1, p.n_prompt)
            await receiver.wait(sink, positions, 30.0)
            for name, vals in sink.scores(frames[frame], positions).items():
                got = [v for v in vals if v is not None]
                scores[i][name] = (sum(got) / len(got)) if got and len(got) == len(vals) else None
        data = [{"index": i, "object": "probe_score", "scores": {n: scores[i].get(n) for n in probes},
                 "tokens": raw[i].n_prompt} for i in range(len(texts))]
    finally:
        for pid in ids:
            receiver.unregister(pid)
    prepared = [p for _, _, p in jobs]
    serving.metrics.prompt_tokens.inc(sum(p.n_prompt for p in prepared))
    return {"object": "list", "data": data, "model": serving.model_name, "reduce": req.reduce,
            "usage": {"prompt_tokens": sum(p.n_prompt for p in prepared), "total_tokens":
                      sum(p.n_prompt for p in prepared)}}
