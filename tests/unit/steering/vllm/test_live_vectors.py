"""Registry slots and inline vectors in the worker tables, and inline vectors in the request spec."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
import torch

import steering.vllm.custom_op  # noqa: F401  (registers torch.ops.truthsteer.steer)
from server.steering_state import vector_bytes
from steering.errors import SpecError
from steering.inline import InlineLimits, InlineVectors, digest
from steering.request import EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, cache_salt, parse_ops, resolve, wire
from steering.vllm.dynamic_rows import reg_ref
from steering.vllm.runtime import SteeringRuntime
from tests.support.tiny import INFO, make_bundle
from tests.support.toy import H, Req, ToyModel, fake_runner

TRUTH = make_bundle("truth", seed=3)
OTHER = make_bundle("other", seed=4)
X = torch.randn(5, H, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _inference() -> Any:
    with torch.inference_mode():
        yield


def runtime(static: list[Any], max_directions: int = 0, max_inline: int = 0) -> tuple[ToyModel, SteeringRuntime]:
    model = ToyModel()
    rt = SteeringRuntime(model.layers, static, hidden_size=H, max_tokens=32, max_ops_per_layer=4,
                         device=torch.device("cpu"), dtype=torch.float32, max_directions=max_directions,
                         max_inline=max_inline)
    return model, rt


def run(model: ToyModel, rt: SteeringRuntime, reqs: list[Req], x: torch.Tensor) -> torch.Tensor:
    rt.prepare_step(rt.planner.plan(fake_runner(reqs)))
    return model(x)


def ops_on(name: str, vector: str = "") -> list[ResolvedOp]:
    return [ResolvedOp(name, "add", 3.0, (1, 2), "prompt", (), None, vector),
            ResolvedOp(name, "ablate", 0.5, (3,), "all", (), None, vector),
            ResolvedOp(name, "clamp", 1.0, (0,), "all", (0.25,), None, vector)]


def inline_extra(ops: list[ResolvedOp], bundle: Any) -> dict[str, Any]:
    layers, data = vector_bytes(bundle)
    key = digest({k: bundle.vectors[k].numpy() for k in layers})
    ops = [ResolvedOp(o.direction, o.op, o.strength, o.layers, o.positions, o.targets, None, "inline:" + key)
           for o in ops]
    return {EXTRA_ARGS_KEY: {"steering": wire(ops), "vectors": {key: {"layers": layers, "data": data}}}}


def register(rt: SteeringRuntime, slot: int, bundle: Any) -> str:
    layers, data = vector_bytes(bundle)
    key = digest({k: bundle.vectors[k].numpy() for k in layers})
    rt.dynamic.set_direction(slot, key, layers, data)
    return reg_ref(slot, key)


def test_registered_and_inline_vectors_steer_exactly_as_the_same_bundle_loaded_at_start_up() -> None:
    model, static = runtime([OTHER, TRUTH])
    expected = run(model, static, [Req("s", 5, 0, 5, ops_on("truth"))], X)
    model2, live = runtime([OTHER], max_directions=3, max_inline=2)
    ref = register(live, 2, TRUTH)
    assert torch.equal(run(model2, live, [Req("r", 5, 0, 5, ops_on("truth", ref))], X), expected)
    assert torch.equal(run(model2, live, [Req("i", 5, 0, 5, extra=inline_extra(ops_on("x"), TRUTH))], X), expected)
    assert live.rejected == 0
    # in one batch with a start-up direction and an unsteered request: each row as alone
    batch = [Req("a", 5, 0, 5, ops_on("truth", ref)), Req("b", 5, 0, 5, extra=inline_extra(ops_on("x"), OTHER)),
             Req("c", 5, 0, 5, ops_on("other")), Req("d", 5, 0, 5)]
    out = run(model2, live, batch, torch.cat([X] * 4))
    solos = [run(model2, live, [Req(r.rid + "-solo", 5, 0, 5, r.steering, r.extra)], X) for r in batch]
    for i, solo in enumerate(solos):
        assert torch.equal(out[5 * i:5 * i + 5], solo), batch[i].rid
    assert torch.equal(solos[1], solos[2])  # OTHER inline == OTHER at start-up
    assert torch.equal(solos[3], ToyModel()(X))


def test_a_reference_to_a_slot_holding_other_vectors_runs_unsteered_and_is_counted() -> None:
    model, rt = runtime([], max_directions=1)
    ref = register(rt, 0, TRUTH)
    register(rt, 0, OTHER)  # the slot now holds other vectors: the old digest no longer matches
    assert torch.equal(run(model, rt, [Req("r", 5, 0, 5, ops_on("truth", ref))], X), ToyModel()(X))
    assert rt.rejected == 1


def test_inline_rows_belong_to_a_request_until_it_leaves_the_batch() -> None:
    model, rt = runtime([], max_inline=1)
    a, b = inline_extra(ops_on("x"), TRUTH), inline_extra(ops_on("x"), OTHER)
    run(model, rt, [Req("a", 5, 0, 5, extra=a)], X)
    assert rt.dynamic.inline_in_use == 1
    full = run(model, rt, [Req("a", 5, 5, 1, extra=a), Req("b", 5, 0, 5, extra=b)], torch.cat([X[:1], X]))
    assert rt.rejected == 1 and torch.equal(full[1:], ToyModel()(X))  # no row left: b unsteered, never a's row
    b2 = run(model, rt, [Req("b2", 5, 0, 5, extra=b)], X)  # a and b left: their row is b2's now
    assert rt.dynamic.inline_in_use == 1
    ref_model, ref_rt = runtime([OTHER])
    assert torch.equal(b2, run(ref_model, ref_rt, [Req("o", 5, 0, 5, ops_on("other"))], X))
    run(model, rt, [], X[:0])
    assert rt.dynamic.inline_in_use == 0


# ------------------------------------------------------------------ the request side
def resolve_inline(raw: list[dict[str, Any]], limits: InlineLimits | None = None) -> tuple[list[ResolvedOp],
                                                                                          InlineVectors]:
    inline = InlineVectors(INFO, limits or InlineLimits())
    return resolve(parse_ops(raw), {"truth": TRUTH}, INFO.num_layers, param="steering", inline=inline), inline


def b64(v: np.ndarray, dtype: str = "<f4") -> str:
    return base64.b64encode(v.astype(dtype).tobytes()).decode()


def test_inline_forms_decode_to_the_same_vector_and_salt_follows_the_content() -> None:
    v = np.arange(H, dtype=np.float32) / 4  # exact in float16 too
    forms = [{"vector": v.tolist(), "layers": [1, 2]}, {"vector": b64(v), "layers": {"start": 1, "end": 3}},
             {"vector": b64(v, "<f2"), "vector_dtype": "float16", "layers": [1, 2]},
             {"vector": {"1": v.tolist(), "2": b64(v)}}]
    salts = set()
    for form in forms:
        ops, inline = resolve_inline([{**form, "strength": 2.0}])
        (key,) = inline.payload()
        assert ops[0].vector == "inline:" + key and ops[0].layers == (1, 2) and ops[0].direction == "inline"
        assert np.array_equal(np.frombuffer(inline.payload()[key]["data"], "<f4").reshape(2, H), np.stack([v, v]))
        salts.add(cache_salt(ops))
    assert len(salts) == 1
    w = v.copy()
    w[3] = np.nextafter(w[3], np.float32(10))  # one ulp apart: another vector, another salt
    ops, _ = resolve_inline([{"vector": w.tolist(), "layers": [1, 2], "strength": 2.0}])
    assert cache_salt(ops) not in salts
    named = resolve(parse_ops([{"direction": "truth", "layers": [1, 2], "strength": 2.0}]), {"truth": TRUTH},
                    INFO.num_layers)
    assert cache_salt(named) not in salts and "vector" not in wire(named)[0]  # start-up ops keep their wire form


GOOD = [0.5] * H


@pytest.mark.parametrize(("op", "param", "text"), [
    ({"vector": GOOD[:-1], "layers": [1]}, "steering[0].vector", "hidden size"),
    ({"vector": [*GOOD[:-1], float("nan")], "layers": [1]}, "steering[0].vector", "NaN"),
    ({"vector": b64(np.ones(H + 1, np.float32)), "layers": [1]}, "steering[0].vector", "bytes"),
    ({"vector": "not base64!", "layers": [1]}, "steering[0].vector", "base64"),
    ({"vector": [1e5] * H, "layers": [1]}, "steering[0].vector", "norm"),
    ({"vector": GOOD}, "steering[0].layers", "layers"),
    ({"vector": GOOD, "layers": [9]}, "steering[0].layers", "outside"),
    ({"vector": {"9": GOOD}}, "steering[0].vector.9", "outside"),
    ({"vector": {"x": GOOD}}, "steering[0].vector", "layer number"),
    ({"vector": GOOD, "layers": [1], "op": "clamp"}, "steering[0].target", "target"),
    ({"vector": GOOD, "direction": "truth", "layers": [1]}, "steering[0].direction", "exactly one"),
    ({"layers": [1]}, "steering[0].direction", "exactly one"),
])
def test_bad_inline_vectors_name_the_parameter(op: dict[str, Any], param: str, text: str) -> None:
    with pytest.raises(SpecError) as ei:
        resolve_inline([op])
    assert ei.value.param == param and text in str(ei.value)


def test_inline_vector_count_is_capped_and_inline_can_be_refused() -> None:
    ops = [{"vector": [float(i)] * H, "layers": [1]} for i in range(1, 4)]
    with pytest.raises(SpecError) as ei:
        resolve_inline(ops, InlineLimits(max_vectors=2))
    assert ei.value.param == "steering[2].vector"
    same = [{"vector": GOOD, "layers": [1], "op": op} for op in ("add", "ablate", "add")]  # one vector, three ops
    assert len(resolve_inline(same, InlineLimits(max_vectors=1))[1].payload()) == 1
    with pytest.raises(SpecError) as ei:
        resolve(parse_ops(ops[:1]), {}, INFO.num_layers)
    assert ei.value.param == "steering[0].vector"
