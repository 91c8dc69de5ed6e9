"""The two execution modes of the in-graph ops: skip-idle (CPU default) and all-slots (accelerators,
selectable on CPU): the mode is what the ops read, the runtime sets it, and results are identical."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from steering.decoding.stash import HiddenStash
from steering.request import EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, wire
from steering.vllm.config import WorkerConfig
from steering.vllm.custom_op import ALL_SLOTS_ATTR
from steering.vllm.runtime import SteeringRuntime
from tests.support.tiny import make_bundle
from tests.support.toy import H, Req, ToyModel, fake_runner

TRUTH, OTHER = make_bundle("truth", seed=3), make_bundle("other", layers=[1, 2, 3], seed=4)


@pytest.fixture(autouse=True)
def _inference() -> Any:
    torch._dynamo.reset()  # a fresh recompile budget for the toy model's forward
    with torch.inference_mode():
        yield


def test_all_slots_runs_every_slot_and_row_without_reading_the_host_flags() -> None:
    """With ``active`` saying "nothing to do", skip-idle mode does nothing and all-slots mode
    still applies what the tables hold: the flag is read in one mode only."""
    g = torch.Generator().manual_seed(0)
    hidden, residual = torch.randn(3, H, generator=g), torch.randn(3, H, generator=g)
    table = torch.cat([torch.zeros(1, H), TRUTH.unit(1)[None]])
    idx = torch.tensor([[1, 0, 1], [0, 0, 0]])
    coef = torch.zeros(2, 3, 3)
    coef[0, 1], coef[0, 2] = 2.0, 1.5  # add: b = 2, strength 1.5
    off = torch.zeros(1, dtype=torch.int32)
    skip = torch.ops.truthsteer.steer(hidden, residual, table, idx, coef, off, False)
    full = torch.ops.truthsteer.steer(hidden, residual, table, idx, coef, off, True)
    assert torch.equal(skip, hidden)
    torch.testing.assert_close(full[0], hidden[0] + 3.0 * TRUTH.unit(1), rtol=0, atol=1e-6)
    assert torch.equal(full[1], hidden[1])
    w, b, out = torch.randn(2, H, generator=g), torch.zeros(2), torch.full((4, 2), 7.0)
    torch.ops.truthsteer.probe(hidden, residual, w, b, out, off, False)
    assert torch.equal(out, torch.full((4, 2), 7.0))
    torch.ops.truthsteer.probe(hidden, residual, w, b, out, off, True)
    torch.testing.assert_close(out[:3], (hidden + residual) @ w.t(), rtol=1e-6, atol=1e-6)
    rows, sout = torch.tensor([2, 0]), torch.zeros(2, H)
    torch.ops.truthsteer.stash(hidden, residual, rows, sout, off, False)
    assert not sout.any()
    torch.ops.truthsteer.stash(hidden, residual, rows, sout, off, True)
    assert torch.equal(sout, (hidden + residual)[[2, 0]])


def _step(all_slots: bool, compiled: bool) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    model = ToyModel()
    rt = SteeringRuntime(model.layers, [TRUTH, OTHER], hidden_size=H, max_tokens=16, max_ops_per_layer=3,
                         device=torch.device("cpu"), dtype=torch.float32, all_slots=all_slots)
    stash = HiddenStash(model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32)
    rt.planner.decoding = True
    assert all(getattr(m, ALL_SLOTS_ATTR) is all_slots for m in model.layers)
    ops = [ResolvedOp("truth", "add", 3.0, (1, 2), "all"), ResolvedOp("other", "ablate", 1.0, (2,), "generated"),
           ResolvedOp("truth", "clamp", 0.5, (1,), "prompt", (1.5,))]
    extra = {EXTRA_ARGS_KEY: {"steering": wire(ops), "probes": {"id": "p"},
                              "decoding": {"method": "contrast", "layers": [0, 2], "weights": [1.0, 0.5]}}}
    reqs = [Req("a", 3, 0, 3, extra=extra), Req("b", 5, 7, 1), Req("c", 4, 2, 4, extra=extra)]
    fn = torch.compile(model, backend="inductor", dynamic=True, fullgraph=True) if compiled else model
    g = torch.Generator().manual_seed(1)
    outs = []
    for step in (reqs, reqs[1:2], reqs):  # steered, then idle, then steered again: tables refresh
        plan = rt.planner.plan(fake_runner(step))
        stash.prepare(plan)
        rt.prepare_step(plan)
        outs.append(fn(torch.randn(8 if len(step) == 3 else 1, H, generator=g)))
    probes = {k: v.clone() for k, v in rt.readout.outs.items()}
    return torch.cat(outs), probes, {k: v.clone() for k, v in stash.outs.items()}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_runtime_in_all_slots_mode_gives_bit_identical_streams_probes_and_stashes(compiled: bool) -> None:
    skip, skip_probes, skip_stash = _step(False, compiled)
    full, full_probes, full_stash = _step(True, compiled)
    assert torch.equal(skip, full)
    for k in skip_probes:
        assert torch.equal(skip_probes[k][:8], full_probes[k][:8]) and skip_probes[k][:8].abs().min() > 0
    for k in (0, 2):  # the layers the last step's contrast reads, at its sampling rows
        assert torch.equal(skip_stash[k][:3], full_stash[k][:3]) and skip_stash[k][:3].abs().min() > 0
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, H, generator=g) for n in (8, 1, 8)]
    plain = torch.cat([ToyModel()(x) for x in xs])
    assert not torch.allclose(full[:3], plain[:3], atol=1e-3)  # the steered rows were steered
    assert torch.equal(full[8:9], plain[8:9])  # the idle step is plain, bit for bit


def test_worker_config_carries_the_mode_into_the_compile_hash() -> None:
    on = WorkerConfig(all_slots=True).to_additional_config()
    assert on["truthsteer"]["all_slots"] is True
    assert WorkerConfig().to_additional_config() != on


def test_pipeline_parallelism_is_refused_for_a_steering_engine_only() -> None:
    from steering.engine import EngineOptions, check_parallelism

    with pytest.raises(ValueError, match="pipeline_parallel_size=2"):
        check_parallelism(EngineOptions(extra={"pipeline_parallel_size": 2}))
    check_parallelism(EngineOptions(tensor_parallel_size=3))
    check_parallelism(EngineOptions(steering=False, extra={"pipeline_parallel_size": 2}))  # plain vLLM baseline
