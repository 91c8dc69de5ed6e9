"""Probe read-out on the vLLM-shaped toy model: which rows, which values, which request; the channel."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest
import torch

from steering.request import EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, wire
from steering.vllm.probe_channel import ProbeReceiver, ProbeSender, StepMessage
from steering.vllm.probe_readout import folded_probe
from steering.vllm.runtime import SteeringRuntime
from tests.support.tiny import make_bundle
from tests.support.toy import H, Req, ToyModel, fake_runner

pytestmark = pytest.mark.usefixtures("ops_mode")  # both modes of the ops (tests/unit/conftest.py)

TRUTH = make_bundle("truth", seed=3)  # probe at layer 0
SYC = make_bundle("syc", layers=[2, 3], seed=5)  # probe at layer 2
ADD = [ResolvedOp("truth", "add", 3.0, (0, 2), "all")]


@pytest.fixture(autouse=True)
def _inference() -> Any:
    with torch.inference_mode():
        yield


def setup() -> tuple[ToyModel, SteeringRuntime]:
    model = ToyModel()
    rt = SteeringRuntime(model.layers, [TRUTH, SYC], hidden_size=H, max_tokens=32, max_ops_per_layer=2,
                         device=torch.device("cpu"), dtype=torch.float32)
    return model, rt


def probed(rid: str, n_prompt: int, n_computed: int, n_sched: int, steering: list[ResolvedOp] | None = None,
           prompt: bool = False) -> Req:
    extra: dict[str, Any] = {"probes": {"id": f"id-{rid}", "prompt": prompt}}
    if steering:
        extra["steering"] = wire(steering)
    return Req(rid, n_prompt, n_computed, n_sched, extra={EXTRA_ARGS_KEY: extra})


def streams(x: torch.Tensor, steering: list[ResolvedOp] | None) -> list[torch.Tensor]:
    """The stream after every layer, with ``add`` ops applied by plain code."""
    model = ToyModel()
    h, r, out = x, None, []
    for k, layer in enumerate(model.layers):
        h, r = layer(h, r)
        for op in steering or []:
            if k in op.layers:
                h = h + op.strength * TRUTH.vectors[k]
        out.append(h + r)
    return out


def expected(x: torch.Tensor, steering: list[ResolvedOp] | None, rows: list[int]) -> list[list[float]]:
    s = streams(x, steering)
    cols = []
    for b in (TRUTH, SYC):
        w, bias = folded_probe(b)
        assert b.meta.probe is not None
        cols.append(torch.sigmoid(s[b.meta.probe.layer][rows] @ w + bias))
    return torch.stack(cols, 1).tolist()


def scores(msg: StepMessage) -> dict[str, tuple[list[int], list[list[float]]]]:
    return {pid: (pos, [[1 / (1 + math.exp(-z)) for z in row] for row in logits]) for pid, pos, logits, _f in msg.rows}


def test_sampling_rows_only_prompt_rows_on_request_and_steered_stream_read() -> None:
    model, rt = setup()
    g = torch.Generator().manual_seed(1)
    reqs = [
        probed("a", n_prompt=3, n_computed=0, n_sched=3),  # full prefill: samples at its last row
        Req("plain", n_prompt=5, n_computed=7, n_sched=1),  # no probes: no row sent
        probed("c", n_prompt=6, n_computed=0, n_sched=4),  # partial prefill chunk: samples nothing
        probed("d", n_prompt=2, n_computed=9, n_sched=1, steering=ADD),  # steered decode
        probed("e", n_prompt=4, n_computed=1, n_sched=3, prompt=True),  # prompt scores, then samples
    ]
    xs = [torch.randn(r.n_sched, H, generator=g) for r in reqs]
    rt.prepare_step(rt.planner.plan(fake_runner(reqs)))
    model(torch.cat(xs))
    msg, sampled = rt.readout.collect()
    assert msg is not None and msg.names == ["truth", "syc"] and sampled == {}
    got = scores(msg)
    assert sorted(got) == ["id-a", "id-d", "id-e"]
    assert got["id-a"][0] == [2]  # absolute position of the sampling row
    assert got["id-d"][0] == [9]
    assert got["id-e"][0] == [1, 2, 3]  # prompt positions 1..3, the last of which samples
    for rid, x, steering, rows in (("a", xs[0], None, [2]), ("d", xs[3], ADD, [0]), ("e", xs[4], None, [0, 1, 2])):
        np.testing.assert_allclose(got[f"id-{rid}"][1], expected(x, steering, rows), rtol=1e-5, atol=1e-6)
    # steering moved the truth probe of the steered row (and only there)
    assert not np.allclose(expected(xs[3], ADD, [0]), expected(xs[3], None, [0]))
    assert rt.readout.collect() == (None, {})  # rows are sent once


def test_op_is_off_without_probe_requests_and_results_are_unchanged() -> None:
    model, rt = setup()
    x = torch.randn(3, H)
    base = ToyModel()(x)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("p", 3, 0, 3)])))
    assert all(int(a.item()) == 0 for a in rt.readout.actives.values())
    assert torch.equal(model(x), base)
    rt.prepare_step(rt.planner.plan(fake_runner([probed("q", 3, 0, 3)])))
    assert all(int(a.item()) == 1 for a in rt.readout.actives.values())
    assert torch.equal(model(x), base)  # reading probes never changes the forward pass
    rt.prepare_step(rt.planner.plan(fake_runner([Req("p", 3, 0, 3)])))
    assert all(int(a.item()) == 0 for a in rt.readout.actives.values())
    assert "q" not in rt.planner.requests


@pytest.mark.parametrize("extra", [{"probes": "truth"}, {"probes": {"id": 5}}, {"probes": {"id": ""}}, {"probes": []}])
def test_junk_probe_args_are_ignored(extra: dict[str, Any]) -> None:
    model, rt = setup()
    rt.prepare_step(rt.planner.plan(fake_runner([Req("j", 2, 0, 2, extra={EXTRA_ARGS_KEY: extra})])))
    model(torch.randn(2, H))
    assert rt.readout.collect() == (None, {})


def test_compiled_graph_writes_probe_logits() -> None:
    model, rt = setup()
    compiled = torch.compile(model, backend="inductor", dynamic=True, fullgraph=True)
    x = torch.randn(4, H)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("p", 4, 0, 4)])))
    compiled(x)
    rt.prepare_step(rt.planner.plan(fake_runner([probed("a", 4, 0, 4, ADD, prompt=True)])))
    compiled(x)
    msg, _ = rt.readout.collect()
    assert msg is not None
    np.testing.assert_allclose(scores(msg)["id-a"][1], expected(x, ADD, [0, 1, 2, 3]), rtol=1e-5, atol=1e-6)


def test_channel_routes_rows_by_probe_id_and_waits_for_late_rows() -> None:
    async def main() -> None:
        sender = ProbeSender()
        receiver = ProbeReceiver(sender.address)
        receiver.start()
        a, b = receiver.register("a"), receiver.register("b")
        await asyncio.sleep(0.05)  # let the PULL side connect
        sender.send(StepMessage(["truth"], [("a", [4], [[0.0]], [-1]), ("b", [7, 8], [[2.0], [-2.0]], [-1, 1]),
                                            ("gone", [1], [[1.0]], [-1])]))
        assert await receiver.wait(a, range(4, 5), timeout=5)
        assert await receiver.wait(b, range(7, 9), timeout=5)
        assert a.scores(["truth"], range(4, 5)) == {"truth": [0.5]}
        got = b.scores(["truth", "nope"], range(7, 10))
        assert got["truth"][:2] == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))])
        assert got["truth"][2] is None and got["nope"] == [None, None, None]
        assert receiver.unclaimed == 1
        assert b.flags == {8: 1} and a.flags == {}
        assert not await receiver.wait(a, range(5, 6), timeout=0.1)  # never sent: times out, no hang
        late = asyncio.create_task(receiver.wait(a, range(5, 6), timeout=5))
        await asyncio.sleep(0.05)
        sender.send(StepMessage(["truth"], [("a", [5], [[1.0]], [0])]))
        assert await late
        receiver.unregister("a")
        await receiver.close()
        sender.close()

    asyncio.run(main())


def test_handshake_waits_for_the_channel_and_gives_up_without_a_worker() -> None:
    """Right after connect, the worker's first sends may be dropped (no peer yet); the handshake
    retries until a ping arrives, and every row after it is delivered. A worker that never sends
    makes it return False at the deadline instead of hanging."""

    async def main() -> None:
        sender = ProbeSender()
        receiver = ProbeReceiver(sender.address)
        receiver.start()
        pings: list[bool] = []

        async def ping(pid: str) -> None:
            pings.append(sender.ping(pid))

        assert await receiver.handshake(ping, timeout=10) and pings[-1]
        sink = receiver.register("a")  # now the very next row arrives
        sender.send(StepMessage(["truth"], [("a", [0], [[0.0]], [-1])]))
        assert await receiver.wait(sink, range(0, 1), timeout=5) and receiver.unclaimed == 0

        async def silent(pid: str) -> None:
            return None

        t = time.monotonic()
        assert not await receiver.handshake(silent, timeout=0.3)
        assert time.monotonic() - t < 2 and receiver._sinks.keys() == {"a"}  # the ping sink is gone
        await receiver.close()
        sender.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------- probe-gated steering
def gated_op(below: float, initial: str = "closed", hold: int = 0, window: int = 1) -> list[ResolvedOp]:
    from steering.spec import ResolvedGate

    gate = ResolvedGate("truth", below, None, window, hold, initial)
    return [ResolvedOp("truth", "add", 3.0, (1, 2), "all", (), gate)]


def decode_steps(model: ToyModel, rt: SteeringRuntime, ops: list[ResolvedOp] | None, xs: list[torch.Tensor],
                 rid: str = "g", others: bool = False) -> list[torch.Tensor]:
    """Prefill (3 tokens) then decode steps, one request; optionally next to an unsteered request."""
    outs = []
    for t, x in enumerate(xs):
        n_computed = 0 if t == 0 else 2 + t
        req = Req(rid, 3, n_computed, x.shape[0], ops)
        reqs = [req, Req("other-" + rid, 9, 9 + t, 1)] if others else [req]
        batch = torch.cat([x, torch.randn(1, H)]) if others else x
        plan = rt.planner.plan(fake_runner(reqs))
        rt.prepare_step(plan)
        outs.append(model(batch)[: x.shape[0]])
        rt.finish_step(plan)
    return outs


def steps() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(3, H, generator=g)] + [torch.randn(1, H, generator=g) for _ in range(4)]


def test_gate_that_never_fires_equals_no_steering_bitwise() -> None:
    xs = steps()
    base = decode_steps(*setup(), None, xs)
    never = decode_steps(*setup(), gated_op(below=-1.0), xs, others=True)
    assert all(torch.equal(a, b) for a, b in zip(base, never, strict=True))


def test_gate_that_always_fires_equals_ungated_steering_bitwise() -> None:
    xs = steps()
    ungated = decode_steps(*setup(), [ResolvedOp("truth", "add", 3.0, (1, 2), "all")], xs)
    always = decode_steps(*setup(), gated_op(below=2.0, initial="open"), xs, others=True)
    assert all(torch.equal(a, b) for a, b in zip(ungated, always, strict=True))
    # closed at first: the prompt pass is unsteered, every later step steered
    late = decode_steps(*setup(), gated_op(below=2.0), xs)
    base = decode_steps(*setup(), None, xs)
    assert torch.equal(late[0], base[0]) and all(torch.equal(a, b) for a, b in zip(late[1:], ungated[1:], strict=True))


def test_gates_follow_their_own_requests_scores() -> None:
    """The gate opens exactly at the steps after a sampled score below the threshold."""
    xs = steps()
    model, rt = setup()
    truth_scores = []
    for t, x in enumerate(xs):  # record the unsteered truth scores of the sampling rows
        rt.prepare_step(rt.planner.plan(fake_runner([probed("s", 3, 0 if t == 0 else 2 + t, x.shape[0])])))
        model(x)
        msg, _ = rt.readout.collect()
        assert msg is not None
        truth_scores.append(scores(msg)["id-s"][1][-1][0])
    thr = sorted(truth_scores)[2]  # fires on some steps, not on others
    model, rt = setup()
    outs = decode_steps(model, rt, gated_op(below=thr), xs)
    base = decode_steps(*setup(), None, xs)
    ungated = decode_steps(*setup(), [ResolvedOp("truth", "add", 3.0, (1, 2), "all")], xs)
    # step t is steered iff the (possibly steered) sampled score at step t-1 fired; step 0 is closed
    assert torch.equal(outs[0], base[0])
    for t in range(1, len(xs)):
        assert torch.equal(outs[t], ungated[t]) or torch.equal(outs[t], base[t])
    assert any(torch.equal(outs[t], ungated[t]) and not torch.equal(ungated[t], base[t]) for t in range(1, len(xs)))


def test_gate_state_window_and_hold() -> None:
    from steering.spec import ResolvedGate
    from steering.vllm.gates import GateState

    g = GateState(ResolvedGate("truth", 0.5, None, window=2, hold=1))
    assert not g.open
    g.update(0.2)  # avg 0.2 < 0.5
    assert g.open
    g.update(0.9)  # avg 0.55: no longer fires, but holds one more step
    assert g.open
    g.update(0.9)
    assert not g.open
    up = GateState(ResolvedGate("syc", None, 0.7, initial="open"))
    assert up.open
    up.update(0.1)
    assert not up.open
    up.update(0.8)
    assert up.open
