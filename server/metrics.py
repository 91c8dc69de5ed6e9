"""Prometheus metrics of the server (prometheus-client), all named ``truthsteer_*``.

One :class:`Metrics` per app, on its own registry (no process-global state, so tests can build
many apps). Label sets that are known at start-up (endpoints, directions, probes) are initialised
to zero so that dashboards and alerts see every series before the first request.

What a completion's choices add (probe scores, interventions, abstentions, token counts) is
recorded here, by :meth:`Metrics.record_choice` and :meth:`Metrics.record_usage`, from the outcome
the response is formatted from; formatting records nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from server.choices import ChoiceOutcome

ENDPOINTS = ("chat", "completions", "probes_score")
OPS = ("add", "ablate", "clamp")
DECODING_METHODS = ("dola", "contrast")
ERROR_CODES = ("invalid_value", "invalid_json", "invalid_steering", "invalid_decoding", "unknown_probe",
               "model_not_found",
               "context_length_exceeded", "invalid_api_key", "request_too_large", "unsupported",
               # live registry, inline vectors, activation capture
               "invalid_bundle", "direction_exists", "direction_static", "direction_not_found", "registry_full",
               "admin_required", "inline_capacity", "too_many_positions", "too_many_values")
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_TOKEN_LATENCY = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_SCORE = tuple(round(0.05 * i, 2) for i in range(1, 21))
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096)


class Metrics:
    def __init__(self, directions: Iterable[str] = (), probes: Iterable[str] = ()) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "truthsteer_"
        self.requests = Counter(p + "requests", "Requests by endpoint and HTTP status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram(p + "request_duration_seconds", "End-to-end request latency", ["endpoint"],
                                 buckets=_LATENCY, registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time to the first generated token", ["endpoint"],
                              buckets=_LATENCY, registry=r)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between generated tokens of a choice",
                             buckets=_TOKEN_LATENCY, registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter(p + "completion_tokens", "Tokens generated", registry=r)
        self.completion_length = Histogram(p + "completion_length_tokens", "Generated tokens per choice",
                                           buckets=_TOKENS, registry=r)
        self.in_flight = Gauge(p + "requests_in_flight", "Requests being served", ["endpoint"], registry=r)
        self.steered_requests = Counter(p + "steered_requests", "Requests with at least one steering operation",
                                        registry=r)
        self.steering_ops = Counter(p + "steering_ops", "Steering operations requested, by direction and op",
                                    ["direction", "op"], registry=r)
        self.default_steering_requests = Counter(p + "default_steering_requests", "Requests steered by the server's "
                                                 "default_steering (they carried no steering)", registry=r)
        self.registered_directions = Gauge(p + "registered_directions", "Directions in the live registry",
                                           registry=r)
        self.probe_requests = Counter(p + "probe_requests", "Requests that asked for probe scores", registry=r)
        self.probe_score = Histogram(p + "probe_score", "Mean calibrated probe score per choice", ["probe"],
                                     buckets=_SCORE, registry=r)
        self.probe_flagged = Counter(p + "probe_flagged", "Choices whose mean score crossed the probe's flag threshold",
                                     ["probe"], registry=r)
        self.decoding_requests = Counter(p + "decoding_requests", "Requests with contrastive decoding, by method",
                                         ["method"], registry=r)
        self.abstentions = Counter(p + "abstentions", "Choices replaced by the abstention message, by probe",
                                   ["probe"], registry=r)
        self.intervention_tokens = Counter(p + "intervention_tokens", "Generated tokens that were steered or "
                                           "contrasted, by direction (or decoding method) and kind",
                                           ["direction", "kind"], registry=r)
        self.rejected = Counter(p + "rejected_requests", "Client errors (4xx) by error code", ["code"], registry=r)
        self.engine_running = Gauge(p + "engine_running_requests", "Requests running in the engine", registry=r)
        self.engine_waiting = Gauge(p + "engine_waiting_requests", "Requests waiting in the engine queue", registry=r)
        self.kv_usage = Gauge(p + "kv_cache_usage_ratio", "Fraction of the KV cache in use (0-1)", registry=r)
        self.prefix_hits = Counter(p + "prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
                                   registry=r)
        self.prefix_queries = Counter(p + "prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache",
                                      registry=r)
        for code in ERROR_CODES:
            self.rejected.labels(code)
        for e in ENDPOINTS:
            self.latency.labels(e)
            self.ttft.labels(e)
            self.in_flight.labels(e)
            self.requests.labels(e, "200")
        for d in directions:
            self.intervention_tokens.labels(d, "steered")
            for op in OPS:
                self.steering_ops.labels(d, op)
        for name in probes:
            self.probe_score.labels(name)
            self.probe_flagged.labels(name)
            self.abstentions.labels(name)
        for m in DECODING_METHODS:
            self.decoding_requests.labels(m)
            self.intervention_tokens.labels(m, "contrasted")

    def record_choice(self, out: ChoiceOutcome) -> None:
        """A finished choice: its probes' mean scores and flags, intervention tokens, abstention."""
        for name, summary in (out.probe_scores or {}).items():
            if summary.mean is not None:
                self.probe_score.labels(name).observe(summary.mean)
                if summary.flagged:
                    self.probe_flagged.labels(name).inc()
        iv = out.interventions
        if iv is not None:
            for d in out.directions:
                self.intervention_tokens.labels(d, "steered").inc(iv.steered_tokens)
            if out.contrast_method is not None and iv.contrasted_tokens:
                self.intervention_tokens.labels(out.contrast_method, "contrasted").inc(iv.contrasted_tokens)
        if out.abstain is not None and out.abstain.abstained:
            self.abstentions.labels(out.abstain.probe).inc()

    def record_usage(self, prompt_tokens: int, choice_tokens: Iterable[int]) -> int:
        """A completed request: its prompt tokens and each choice's generated tokens; their sum."""
        lengths = list(choice_tokens)
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(sum(lengths))
        for n in lengths:
            self.completion_length.observe(n)
        return sum(lengths)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def stat_logger_factory(self) -> Any:
        """A vLLM stat-logger factory feeding the engine gauges (queue, running, KV usage)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        metrics = self

        class _EngineStats(StatLoggerBase):  # type: ignore[misc]
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                if scheduler_stats is None:
                    return
                metrics.engine_running.set(scheduler_stats.num_running_reqs)
                metrics.engine_waiting.set(scheduler_stats.num_waiting_reqs)
                metrics.kv_usage.set(scheduler_stats.kv_cache_usage)
                pcs = scheduler_stats.prefix_cache_stats
                if pcs is not None:
                    metrics.prefix_hits.inc(pcs.hits)
                    metrics.prefix_queries.inc(pcs.queries)

            def log_engine_initialized(self) -> None:
                return None

        return _EngineStats


def exported_names(metrics: Metrics) -> set[str]:
    """Sample names as Prometheus scrapes them (``_total``, ``_bucket``, ...), for dashboard checks."""
    return {s.name for fam in metrics.registry.collect() for s in fam.samples}
