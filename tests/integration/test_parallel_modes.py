"""Engine configurations that must not change results, on the real default model and server:

* the ops' all-slots mode (what accelerators run, ``TRUTHSTEER_ALL_SLOTS``) equals the CPU default
  bit for bit;
* tensor parallelism (marker ``tp``, ``make integration-tp``; not in ``make test``): vLLM's CPU
  backend runs one worker process per rank. SmolLM2-135M has 9 attention heads and 3 KV heads, so
  TP=2 is refused by vLLM ("Total number of attention heads (9) must be divisible by tensor
  parallel size (2)"); TP=3 is the smallest split it allows. Greedy tokens and interventions equal
  TP=1's; logprobs and probe scores within ``TP_TOL`` (the ranks' partial sums are all-reduced in
  another order).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.parity import MODEL, Result, max_difference, run_workload
from tests.integration.serve import running_server

pytestmark = pytest.mark.engine
API_KEY = "sk-test-parity"
ENV = {"TRUTHSTEER_API_KEYS": f'["{API_KEY}"]', "TRUTHSTEER_SERVED_MODEL_NAME": MODEL,
       "TRUTHSTEER_KV_CACHE_GIB": "0.5"}
TP_TOL = 1e-3


def _results(env: dict[str, str], timeout_s: float = 1800) -> list[Result]:
    with running_server({**ENV, **env}, timeout_s=timeout_s) as base:
        return run_workload(base, API_KEY)


@pytest.fixture(scope="module")
def baseline() -> Iterator[list[Result]]:
    """The CPU default: skip-idle ops, one rank (its server is stopped before the next starts)."""
    yield _results({})


def test_all_slots_mode_gives_the_cpu_modes_results_bit_for_bit(baseline: list[Result]) -> None:
    got = _results({"TRUTHSTEER_ALL_SLOTS": "true"})
    assert max_difference(got, baseline) == 0.0
    steered = {r.name: r for r in baseline}
    assert steered["add"].tokens != steered["plain"].tokens  # the workload does steer


@pytest.mark.tp
def test_tensor_parallel_3_equals_one_rank(baseline: list[Result]) -> None:
    # each rank would pin its OpenMP threads to its own NUMA node; this machine has one
    got = _results({"TRUTHSTEER_TENSOR_PARALLEL_SIZE": "3", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}, timeout_s=2400)
    assert max_difference(got, baseline) <= TP_TOL
