"""The worker runtime on a vLLM-shaped toy model: rows, positions, isolation, compiled mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import steering.vllm.custom_op  # noqa: F401  (registers torch.ops.truthsteer.steer)
from steering import ops
from steering.request import EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, wire
from steering.vllm.runtime import SteeringRuntime
from tests.support.tiny import make_bundle
from tests.support.toy import H, Req, ToyModel, fake_runner

pytestmark = pytest.mark.usefixtures("ops_mode")  # both modes of the ops (tests/unit/conftest.py)


@pytest.fixture(autouse=True)
def _inference() -> Any:
    with torch.inference_mode():
        yield


BUNDLE = make_bundle("truth", seed=3)
OTHER = make_bundle("other", seed=4)


def setup() -> tuple[ToyModel, SteeringRuntime]:
    model = ToyModel()
    rt = SteeringRuntime(model.layers, [BUNDLE, OTHER], hidden_size=H, max_tokens=32,
                         max_ops_per_layer=3, device=torch.device("cpu"), dtype=torch.float32)
    return model, rt


def run(model: ToyModel, rt: SteeringRuntime, reqs: list[Req], x: torch.Tensor) -> torch.Tensor:
    rt.prepare_step(rt.planner.plan(fake_runner(reqs)))
    return model(x)


def reference(x: torch.Tensor, steering: list[ResolvedOp] | None, positions: np.ndarray, n_prompt: int) -> torch.Tensor:
    """The same toy forward with the operators applied by plain code to the full stream."""
    model = ToyModel()
    h, r = x, None
    for k, layer in enumerate(model.layers):
        h, r = layer(h, r)
        stream = h + r
        for op in steering or []:
            if k not in op.layers:
                continue
            mask = {"all": np.ones_like(positions, bool), "prompt": positions < n_prompt,
                    "generated": positions >= n_prompt}[op.positions]
            b = {"truth": BUNDLE, "other": OTHER}[op.direction]
            j = op.layers.index(k)
            if op.op == "add":
                new = ops.add(stream, b.vectors[k], op.strength)
            elif op.op == "ablate":
                new = ops.ablate(stream, b.unit(k), op.strength)
            else:
                new = ops.clamp(stream, b.unit(k), op.targets[j], op.strength)
            stream = torch.where(torch.from_numpy(mask)[:, None], new, stream)
        h = stream - r
    return h + r


ADD = [ResolvedOp("truth", "add", 3.0, (1, 2), "all")]
MIX = [ResolvedOp("truth", "add", 2.0, (0, 1), "prompt"), ResolvedOp("other", "ablate", 1.0, (1, 3), "generated"),
       ResolvedOp("truth", "clamp", 0.5, (1,), "all", (1.5,))]


def test_mixed_batch_rows_match_their_solo_runs_and_the_reference() -> None:
    model, rt = setup()
    g = torch.Generator().manual_seed(0)
    reqs = [
        Req("a", n_prompt=3, n_computed=0, n_sched=3, steering=ADD),  # prefill
        Req("b", n_prompt=5, n_computed=7, n_sched=1),  # decode, unsteered
        Req("c", n_prompt=4, n_computed=2, n_sched=4, steering=MIX),  # chunk: 2 prompt + 2 recomputed generated
        Req("d", n_prompt=2, n_computed=9, n_sched=1, steering=MIX),  # decode
    ]
    xs = [torch.randn(r.n_sched, H, generator=g) for r in reqs]
    batch = run(model, rt, reqs, torch.cat(xs))
    start = 0
    for r, x in zip(reqs, xs, strict=True):
        rows = batch[start : start + r.n_sched]
        start += r.n_sched
        solo = run(model, rt, [Req(r.rid + "-solo", r.n_prompt, r.n_computed, r.n_sched, r.steering)], x)
        assert torch.equal(rows, solo), r.rid  # isolation: bit-identical to running alone
        pos = r.n_computed + np.arange(r.n_sched)
        torch.testing.assert_close(rows, reference(x, r.steering, pos, r.n_prompt), rtol=1e-5, atol=1e-5)
    # the unsteered row is bit-identical to a model without any steering
    plain = ToyModel()
    assert torch.equal(batch[3:4], plain(xs[1]))


def test_tables_are_cleared_when_steered_requests_leave() -> None:
    model, rt = setup()
    x = torch.randn(4, H)
    run(model, rt, [Req("a", 4, 0, 4, ADD)], x)
    assert rt.buffers[1].active.item() == 1
    out = run(model, rt, [Req("b", 4, 0, 4)], x)
    assert all(int(b.active.item()) == 0 for b in rt.buffers.values())
    assert all(int(b.idx.abs().sum()) == 0 for b in rt.buffers.values())
    assert torch.equal(out, ToyModel()(x))
    assert "a" not in rt.planner.requests  # the request cache follows the batch


def test_strength_zero_and_add_subtract_identities() -> None:
    model, rt = setup()
    x = torch.randn(3, H)
    base = ToyModel()(x)
    zero = [ResolvedOp("truth", "add", 0.0, (0, 1, 2, 3), "all")]
    assert torch.equal(run(model, rt, [Req("z", 3, 0, 3, zero)], x), base)
    pm = [ResolvedOp("truth", "add", 4.0, (1,), "all"), ResolvedOp("truth", "add", -4.0, (1,), "all")]
    torch.testing.assert_close(run(model, rt, [Req("pm", 3, 0, 3, pm)], x), base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "extra",
    [
        {EXTRA_ARGS_KEY: {"steering": [{"direction": "missing", "op": "add", "strength": 1, "layers": [1], "positions": "all"}]}},
        {EXTRA_ARGS_KEY: {"steering": [{"direction": "truth", "op": "add", "strength": 1, "layers": [99], "positions": "all"}]}},
        {EXTRA_ARGS_KEY: {"steering": [{"oops": 1}]}},
        {EXTRA_ARGS_KEY: {"steering": ["truth"]}},
        {EXTRA_ARGS_KEY: {"steering": [{**wire(ADD)[0], "strength": float("nan")}]}},
        {EXTRA_ARGS_KEY: {"steering": [{**wire(ADD)[0], "op": "multiply"}]}},
        {EXTRA_ARGS_KEY: {"steering": [wire(ADD)[0]] * 4}},  # 4 ops on one layer > 3 slots
    ],
)
def test_invalid_worker_specs_never_crash_and_run_unsteered(extra: dict[str, Any]) -> None:
    model, rt = setup()
    x = torch.randn(2, H)
    out = run(model, rt, [Req("bad", 2, 0, 2, extra=extra), Req("ok", 2, 0, 2, ADD)], torch.cat([x, x]))
    assert rt.rejected == 1
    assert torch.equal(out[:2], ToyModel()(x))
    assert not torch.equal(out[2:], out[:2])


def test_compiled_graph_sees_table_updates() -> None:
    """torch.compile traces the hook and the custom op once; later steps change only the tables.

    Compiled vs eager is compared to float32 rounding (inductor may fuse the toy layer's ops
    differently from eager); bit-identity to plain vLLM is asserted compiled-vs-compiled in
    tests/integration/test_engine.py.
    """
    model, rt = setup()
    compiled = torch.compile(model, backend="inductor", dynamic=True, fullgraph=True)
    x = torch.randn(3, H)
    base = ToyModel()(x)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("p", 3, 0, 3)])))
    first = compiled(x)
    torch.testing.assert_close(first, base, rtol=1e-6, atol=1e-6)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("s", 3, 0, 3, ADD)])))
    steered = compiled(x)
    torch.testing.assert_close(steered, reference(x, ADD, np.arange(3), 3), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, base, atol=1e-2)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("p2", 3, 0, 3)])))
    assert torch.equal(compiled(x), first)  # same compiled graph, tables back to zero: bit-identical
