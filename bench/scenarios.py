"""Benchmark scenarios: which server, and the truthsteer fields each request carries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.steering import configs as distinct_configs

SHARED_STEERING: list[dict[str, Any]] = [{"direction": "truth", "strength": 2.0, "layers": [12, 13, 14]}]
PROBES = ["truth", "sycophancy"]
DOLA: dict[str, Any] = {"method": "dola", "premature_layers": "high"}
GATED: list[dict[str, Any]] = [{"direction": "truth", "strength": 2.0, "layers": [12, 13, 14],
                                "gate": {"probe": "truth", "below": 0.35, "window": 2, "hold": 4}}]


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # "vllm" (plain vLLM's own server) or "truthsteer"
    extra: Callable[[int], dict[str, Any]]  # request index -> extension fields


def _const(d: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
    return lambda _i: d


def _distinct(i: int) -> dict[str, Any]:
    return {"steering": distinct_configs(i + 1)[i]}


SCENARIOS = [
    Scenario("plain vLLM", "vllm", _const({})),
    Scenario("truthsteer, no extensions", "truthsteer", _const({})),
    Scenario("one shared steering config", "truthsteer", _const({"steering": SHARED_STEERING})),
    Scenario("all-distinct steering configs", "truthsteer", _distinct),
    Scenario("gated steering", "truthsteer", _const({"steering": GATED})),
    Scenario("probes on (2)", "truthsteer", _const({"probes": PROBES})),
    Scenario("DoLa", "truthsteer", _const({"decoding": DOLA})),
    Scenario("steering + probes + DoLa", "truthsteer",
             lambda i: {**_distinct(i), "probes": PROBES, "decoding": DOLA}),
]
