"""Engine configurations that must not change results, on the real default model and server:

* the ops' all-slots mode (what accelerators run, ``TRUTHSTEER_ALL_SLOTS``) gives the CPU default's
  tokens and interventions, and its logprobs and probe scores within ``MODE_TOL``. The ops
  themselves are bit-identical in both modes (``tests/unit/steering/vllm/test_ops_modes.py``); through
  a whole server, vLLM's scheduling and prefix cache may run a prompt in different batch shapes, and
  on some CPUs (AMD EPYC here) a matrix product over another number of rows rounds differently in
  the last bit (seen: 1.1e-8 in a logprob, 1.7e-24 in a probe score near 0);
* tensor parallelism (marker ``tp``, ``make integration-tp``; not in ``make test``): vLLM's CPU
  backend runs one worker process per rank. SmolLM2-135M has 9 attention heads and 3 KV heads, so
  TP=2 is refused by vLLM ("Total number of attention heads (9) must be divisible by tensor
  parallel size (2)"); TP=3 is the smallest split it allows. Greedy tokens and interventions equal
  TP=1's; logprobs and probe scores within ``TP_TOL`` (the ranks' partial sums are all-reduced in
  another order).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.parity import MODEL, Result, max_difference, run_workload
from tests.support.serve import running_server

pytestmark = pytest.mark.engine
API_KEY = "sk-test-parity"
ENV = {"TRUTHSTEER_API_KEYS": f'["{API_KEY}"]', "TRUTHSTEER_SERVED_MODEL_NAME": MODEL,
       "TRUTHSTEER_KV_CACHE_GIB": "0.5"}
TP_TOL = 1e-3
MODE_TOL = 1e-6  # last-bit rounding only: a leaking slot or a wrong row moves results by far more


MODE_LINE = "all slots every step"  # in the worker's install line when the ops run in all-slots mode


def _results(env: dict[str, str], log: Path, timeout_s: float = 1800) -> list[Result]:
    with running_server({**ENV, **env}, log_path=log, timeout_s=timeout_s) as base:
        return run_workload(base, API_KEY)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Result]]:
    """The CPU default: skip-idle ops, one rank (its server is stopped before the next starts)."""
    log = tmp_path_factory.mktemp("baseline") / "server.log"
    results = _results({}, log)
    assert "truthsteer: steering op on 30 layers" in log.read_text() and MODE_LINE not in log.read_text()
    yield results


def test_all_slots_mode_gives_the_cpu_modes_results(baseline: list[Result], tmp_path: Path) -> None:
    got = _results({"TRUTHSTEER_ALL_SLOTS": "true"}, tmp_path / "server.log")
    assert MODE_LINE in (tmp_path / "server.log").read_text()  # the engine did run the accelerator mode
    diff, where = max_difference(got, baseline)  # tokens and interventions must be equal (raises)
    assert diff <= MODE_TOL, (diff, where)
    steered = {r.name: r for r in baseline}
    assert steered["add"].tokens != steered["plain"].tokens  # the workload does steer


@pytest.mark.tp
def test_tensor_parallel_3_equals_one_rank(baseline: list[Result], tmp_path: Path) -> None:
    # each rank would pin its OpenMP threads to its own NUMA node; this machine has one
    env = {"TRUTHSTEER_TENSOR_PARALLEL_SIZE": "3", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    got = _results(env, tmp_path / "server.log", timeout_s=2400)
    assert (tmp_path / "server.log").read_text().count("truthsteer: steering op on 30 layers") == 3  # one per rank
    diff, where = max_difference(got, baseline)
    print(f"TP=3 vs TP=1: largest logprob / probe-score difference {diff:.2e} ({where})")  # shown with -s
    assert diff <= TP_TOL, where
