"""Serving logic: OpenAI requests -> steered vLLM requests -> choice pieces with probe scores.

Raises :class:`~server.errors.APIError` / :class:`~steering.errors.SpecError` for client errors;
routes stay thin and ``errors.py`` maps everything to OpenAI's error shape. Formatting of the
OpenAI response objects lives in ``completions.py`` and ``formatting.py``. Serving never asks
whether a request is a chat or a completion: the request model says what differs (its prompts,
its token budget, echo scoring; ``protocol.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from server.errors import APIError, bad_request
from server.formatting import now
from server.metrics import Metrics
from server.probing import ProbeInfo, available_probes, select_probes
from server.protocol import Abstain, ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from server.settings import Settings
from server.steering_state import ResolvedSteering, SteeringState
from steering.decoding.spec import ECHO_LOGPROBS, ResolvedDecoding
from steering.engine import PreparedEngine, prepare
from steering.inline import InlineLimits
from steering.request import (
    ModelFacts,
    ProbeRequest,
    RequestContract,
    build,
    check_prompt_contrast,
    resolve_request_decoding,
    tie_word_embeddings,
)
from steering.spec import Limits, ResolvedOp
from steering.vllm.probe_channel import ProbeReceiver, ProbeSink

log = logging.getLogger(__name__)
Req = CompletionRequest | ChatCompletionRequest
PROBE_WAIT_S = 30.0
PROBE_HANDSHAKE_S = 30.0  # start-up: the probe channel must carry a row end to end within this
T = TypeVar("T")


@dataclass
class TokenizedPrompt:
    """One prompt ready for the engine: vLLM's prompt dict (token ids, cache salt) and its length."""

    prompt: dict[str, Any]
    n_prompt: int


@dataclass
class Job:
    """One engine request: a prompt with its sampling parameters; its choices start at ``base``."""

    prompt: TokenizedPrompt
    params: Any
    request_id: str
    base: int
    probe_id: str | None = None
    lease: Any = None  # live-registry slots and inline capacity held while this request may run


@dataclass
class Piece:
    """New output of one choice (a delta): what the response formatters consume."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: Any
    finish_reason: str | None
    prompt_token_ids: list[int]
    probe_tokens: dict[str, list[float | None]] | None = None
    flags: dict[int, int] | None = None  # gated requests: index in ``token_ids`` -> STEERED | CONTRASTED bits
    prompt_logprobs: list[Any] | None = None  # echo + logprobs (first piece only)


@dataclass
class Plan:
    """A validated API request as engine jobs, with what its response needs."""

    jobs: list[Job]
    ops: list[ResolvedOp]
    probes: list[str]  # shown in the response
    n_prompt_tokens: int = 0
    scored: list[str] = field(default_factory=list)  # read from the worker (probes + abstain probe)
    abstain: Abstain | None = None
    decoding: ResolvedDecoding | None = None


def default_model_name(model: str | None, prepared: PreparedEngine) -> str:
    from steering.models import DEFAULT_MODEL, PACKAGED_MODELS

    if model is None or model in PACKAGED_MODELS:
        return PACKAGED_MODELS[model or DEFAULT_MODEL].display_name
    return Path(prepared.model_path).name or prepared.info.name


class Serving:
    def __init__(self, settings: Settings, engine: Any, prepared: PreparedEngine, tokenizer: Any,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.prepared = prepared
        self.tokenizer = tokenizer
        self.model_name = settings.served_model_name or default_model_name(settings.model, prepared)
        self.limits = Limits(
            max_ops=settings.max_steering_ops,
            max_ops_per_layer=settings.max_ops_per_layer,
            max_abs_strength=settings.max_abs_strength,
        )
        self.probes: dict[str, ProbeInfo] = available_probes(prepared.bundles, settings.probe_flag_thresholds)
        self.metrics = metrics or Metrics(prepared.bundles, self.probes)
        self.steering = SteeringState(prepared.bundles, prepared.info, self.limits,
                                      InlineLimits(settings.max_inline_vectors, settings.max_inline_norm),
                                      settings.max_directions, settings.inline_slots, settings.default_steering)
        self.receiver: ProbeReceiver | None = None
        self.created = now()
        # Per-request CPU work (chat template, tokenisation, validation) runs here, off the event
        # loop that streams every token, as vLLM's server does; one thread, since HF tokenizers
        # are not safe for concurrent use.
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="truthsteer-prep")

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the request-preparation thread; its exceptions propagate."""
        return await asyncio.get_running_loop().run_in_executor(self._prep, fn, *args)

    async def build_async(self, req: Req) -> Plan:
        """:meth:`build` off the event loop (what the routes call)."""
        return await self.offload(self.build, req)

    @classmethod
    def start(cls, settings: Settings) -> Serving:
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        prepared = prepare(settings.engine_options())
        metrics = Metrics(prepared.bundles, available_probes(prepared.bundles, settings.probe_flag_thresholds))
        engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**prepared.engine_kwargs), stat_loggers=[metrics.stat_logger_factory()]
        )
        tokenizer = AutoTokenizer.from_pretrained(prepared.model_path)
        return cls(settings, engine, prepared, tokenizer, metrics)

    async def connect_probes(self) -> None:
        """Ask the workers where they publish probe rows and start listening (once, at start-up)."""
        if not self.probes:
            return
        addresses = [a for a in await self.engine.collective_rpc("truthsteer_probe_address") if a]
        if not addresses:
            raise RuntimeError("truthsteer: the engine publishes no probe channel; is the plugin installed?")
        self.receiver = ProbeReceiver(addresses[0])
        self.receiver.start()

        async def ping(pid: str) -> None:
            await self.engine.collective_rpc("truthsteer_probe_ping", args=(pid,))

        if not await self.receiver.handshake(ping, PROBE_HANDSHAKE_S):
            raise RuntimeError(f"truthsteer: no probe row arrived from {addresses[0]} within {PROBE_HANDSHAKE_S:g} s")

    async def close(self) -> None:
        if self.receiver is not None:
            await self.receiver.close()
        self.engine.shutdown()
        self._prep.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ metadata
    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name, created=self.created, root=self.prepared.model_path,
                                         max_model_len=self.settings.max_model_len)])

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"model '{name}' does not exist; this server serves '{self.model_name}'",
                           type="not_found_error", param="model", code="model_not_found")

    # ------------------------------------------------------------------ request building
    def sampling(self, req: Req, max_tokens: int, contract: RequestContract, n: int, seed: int | None) -> Any:
        """The request's ``SamplingParams`` for one engine request (vLLM's own checks: a 400)."""
        try:
            return req.to_sampling_params(max_tokens, contract, n, seed)
        except ValueError as e:  # vLLM's own checks on sampling parameters
            raise bad_request(str(e), None, "invalid_value") from e

    def _validate_common(self, req: Req) -> tuple[ResolvedSteering, list[str]]:
        self.check_model(req.model)
        if req.n > self.settings.max_n:
            raise bad_request(f"n must be <= {self.settings.max_n}", "n", "invalid_value")
        probes = select_probes(req.probes, self.probes)
        if probes and self.receiver is None:
            raise APIError(503, "probe scores are unavailable: the probe channel is not connected",
                           type="service_unavailable", param="probes", code="probes_unavailable")
        copies = req.n * req.n_prompts
        return self.steering.resolve(req.steering, copies), probes

    @property
    def model_facts(self) -> ModelFacts:
        """What a request's ``decoding`` is checked against (layers, tied embeddings, bundles)."""
        return ModelFacts(self.prepared.info.num_layers, tie_word_embeddings(getattr(self.engine, "model_config", None)),
                          self.prepared.bundles)

    def _decoding(self, req: Req) -> ResolvedDecoding | None:
        """The request's ``decoding`` checked against the model and its use (``None``: plain).
        Decoding does not change the KV cache, so it needs no cache salt."""
        decoding = resolve_request_decoding(req.decoding, self.model_facts)
        if decoding is not None and req.echo_scoring:
            # the prompt logprobs are contrasted in the engine (steering/decoding/prompt_contrast.py)
            if not self.settings.prompt_contrast:
                raise bad_request("contrasted prompt logprobs (echo with logprobs under decoding) are disabled on "
                                  "this server (setting prompt_contrast / TRUTHSTEER_PROMPT_CONTRAST); drop echo, "
                                  "logprobs or decoding", "decoding", "prompt_contrast_disabled")
            check_prompt_contrast(decoding, True)
        elif decoding is not None and decoding.echo_scores != ECHO_LOGPROBS:
            raise bad_request("decoding.echo_scores applies to echo scoring only (completions with echo and "
                              "logprobs); drop it or ask for echo and logprobs", "decoding.echo_scores", "invalid_value")
        return decoding

    def _budget(self, req: Req, n_prompt: int) -> int:
        limit = self.settings.max_model_len
        param, requested = req.token_budget()
        if n_prompt >= limit:
            raise bad_request(f"the prompt has {n_prompt} tokens; this model's context is {limit}",
                              req.prompt_param, "context_length_exceeded")
        if requested is None:
            return min(self.settings.default_max_tokens, limit - n_prompt)
        if n_prompt + requested > limit:
            raise bad_request(f"{n_prompt} prompt tokens + {param}={requested} exceed the context of {limit} tokens",
                              param, "context_length_exceeded")
        return int(requested)

    def tokenize(self, items: list[str | list[int]], param: str, salt: str | None) -> list[TokenizedPrompt]:
        vocab = len(self.tokenizer)
        out = []
        for x in items:
            ids = list(self.tokenizer(x)["input_ids"]) if isinstance(x, str) else list(x)
            if not ids:
                raise bad_request(f"{param} must not be empty", param)
            if any(not 0 <= t < vocab for t in ids):
                raise bad_request(f"token ids must be in [0, {vocab})", param)
            prompt: dict[str, Any] = {"prompt_token_ids": ids}
            if salt:
                prompt["cache_salt"] = salt
            out.append(TokenizedPrompt(prompt, len(ids)))
        return out

    def _prompts(self, req: Req, salt: str | None) -> list[TokenizedPrompt]:
        return self.tokenize(req.prompt_inputs(self.tokenizer), req.prompt_param, salt)

    def build(self, req: Req) -> Plan:
        steer, probes = self._validate_common(req)
        ops = steer.ops
        decoding = self._decoding(req)
        scored = self._scored(req, probes)
        steer_gated = any(op.gate is not None for op in ops)
        decode_gated = decoding is not None and decoding.gate is not None
        gated = steer_gated or decode_gated
        if gated and self.receiver is None:
            what, param = ("steering", "steering") if steer_gated else ("decoding", "decoding.gate")
            raise APIError(503, f"probe-gated {what} needs the probe channel, which is not connected",
                           type="service_unavailable", param=param, code="probes_unavailable")
        contract = build(ops, vectors=steer.vectors, decoding=decoding)
        prompts = self._prompts(req, contract.cache_salt)
        max_tokens = min(self._budget(req, p.n_prompt) for p in prompts)
        if req.min_tokens > max_tokens:
            raise bad_request(f"min_tokens={req.min_tokens} is more than the {max_tokens} tokens this request may "
                              "generate", "min_tokens", "invalid_value")
        base_id = uuid.uuid4().hex
        jobs: list[Job] = []
        for i, p in enumerate(prompts):
            if not (scored or gated):
                params = self.sampling(req, max_tokens, contract, req.n, req.seed)
                jobs.append(Job(p, params, f"{base_id}-{i}", i * req.n, lease=steer.lease))
                continue
            # one engine request per choice, so that every choice has its own probe id; seeds as
            # vLLM derives them for its own n > 1 children (seed + index)
            for j in range(req.n):
                pid = f"{base_id}-{i}-{j}"
                seed = None if req.seed is None else req.seed + j
                own = dataclasses.replace(contract, probes=ProbeRequest(pid))
                jobs.append(Job(p, self.sampling(req, max_tokens, own, 1, seed), pid, i * req.n + j, pid, steer.lease))
        if steer.lease is not None:
            steer.lease.hold(len(jobs))
        self._count_request(ops, probes)
        if steer.default:
            self.metrics.default_steering_requests.inc()
        if decoding is not None:
            self.metrics.decoding_requests.labels(decoding.method).inc()
        return Plan(jobs, ops, probes, sum(p.n_prompt for p in prompts), scored, req.abstain, decoding)

    def _scored(self, req: Req, probes: list[str]) -> list[str]:
        """The probes read from the worker: the requested ones and the abstain probe."""
        scored = list(probes)
        if req.abstain is not None:
            if req.abstain.probe not in self.probes:
                raise bad_request(f"unknown probe '{req.abstain.probe}'; available probes: "
                                  f"{', '.join(sorted(self.probes)) or '(none)'}", "abstain.probe", "unknown_probe")
            if self.receiver is None:
                raise APIError(503, "abstention needs probe scores, which are unavailable",
                               type="service_unavailable", param="abstain", code="probes_unavailable")
            if req.abstain.probe not in scored:
                scored.append(req.abstain.probe)
        return scored

    def _count_request(self, ops: list[ResolvedOp], probes: list[str]) -> None:
        m = self.metrics
        if ops:
            m.steered_requests.inc()
            for op in ops:
                m.steering_ops.labels(op.direction, op.op).inc()
        if probes:
            m.probe_requests.inc()

    # ------------------------------------------------------------------ generation
    async def generate(self, job: Job, probes: list[str], endpoint: str) -> AsyncIterator[Piece]:
        # ``probes``: the probes to attach per token (the plan's ``scored``)
        """Run one engine request; yield its deltas, with probe scores attached when asked for."""
        sink: ProbeSink | None = None
        if job.probe_id and self.receiver is not None:
            sink = self.receiver.register(job.probe_id)
        done: dict[int, int] = {}  # tokens seen per choice
        finished = False
        start = last = time.monotonic()
        n_prompt = job.prompt.n_prompt
        try:
            async for out in self.engine.generate(job.prompt.prompt, job.params, job.request_id):
                t = time.monotonic()
                for c in out.outputs:
                    ids = list(c.token_ids)
                    k0 = done.get(c.index, 0)
                    done[c.index] = k0 + len(ids)
                    if ids:
                        if k0 == 0 and c.index == 0:
                            self.metrics.ttft.labels(endpoint).observe(t - start)
                        elif k0:
                            self.metrics.itl.observe((t - last) / len(ids))
                    scores = flags = None
                    if sink is not None and self.receiver is not None:
                        # token k was sampled from the activation at position n_prompt - 1 + k
                        positions = range(n_prompt - 1 + k0, n_prompt - 1 + k0 + len(ids))
                        if not await self.receiver.wait(sink, positions, PROBE_WAIT_S):
                            log.warning("truthsteer: probe scores of %s missing at %s", job.request_id, positions)
                        scores = sink.scores(probes, positions)
                        # by token index within this piece
                        flags = {p - positions.start: sink.flags[p] for p in positions if p in sink.flags}
                    first = k0 == 0  # the prompt's ids and logprobs travel with a choice's first piece only
                    yield Piece(job.base + c.index, c.text, ids, c.logprobs, c.finish_reason,
                                list(out.prompt_token_ids or []) if first else [], scores, flags,
                                getattr(out, "prompt_logprobs", None) if first else None)
                last = t
                finished = out.finished
        finally:
            if not finished:  # a client that went away, or an error: free the engine's slot
                await self.engine.abort(job.request_id)
            if job.lease is not None:  # after the abort: the engine no longer runs it
                job.lease.drop()
            if sink is not None and self.receiver is not None and job.probe_id:
                self.receiver.unregister(job.probe_id)

