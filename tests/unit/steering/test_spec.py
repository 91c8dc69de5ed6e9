from __future__ import annotations

import pytest

from steering.errors import SpecError
from steering.llm import parse_shorthand, to_ops
from steering.spec import LayerRange, Limits, ResolvedOp, SteeringOp, cache_salt, parse_ops, resolve
from tests.support.tiny import INFO, make_bundle

BUNDLES = {"truth": make_bundle("truth"), "partial": make_bundle("partial", layers=[1, 2], probe=False)}


def _resolve(raw: list[dict[str, object]], limits: Limits = Limits()) -> list[ResolvedOp]:
    return resolve(parse_ops(raw), BUNDLES, INFO.num_layers, limits)


def test_defaults_are_filled_in() -> None:
    (op,) = _resolve([{"direction": "truth"}])
    assert op == ResolvedOp("truth", "add", 2.0, (0, 1), "all", ())
    (ab,) = _resolve([{"direction": "truth", "op": "ablate", "layers": {"start": 1, "end": 3}}])
    assert ab == ResolvedOp("truth", "ablate", 1.0, (1, 2), "all", ())
    (cl,) = _resolve([{"direction": "truth", "op": "clamp", "layers": [3], "positions": "generated"}])
    assert cl == ResolvedOp("truth", "clamp", 1.0, (3,), "generated", (1.5,))
    (cl2,) = _resolve([{"direction": "truth", "op": "clamp", "layers": [2, 3], "target": -1.0}])
    assert cl2.targets == (-1.0, -1.0)


def test_wire_round_trip() -> None:
    ops = _resolve([{"direction": "truth", "op": "clamp", "layers": [1, 3], "strength": 0.5}])
    assert [ResolvedOp.from_wire(o.to_wire()) for o in ops] == ops


@pytest.mark.parametrize(
    ("raw", "param", "match"),
    [
        ([{"direction": "nope"}], "steering[0].direction", r"unknown direction 'nope'; available: \['partial', 'truth'\]"),
        ([{"direction": "truth", "layers": [9]}], "steering[0].layers", r"layers \[9\] outside the model's \[0, 4\)"),
        ([{"direction": "truth", "layers": [-1]}], "steering[0].layers", r"outside"),
        ([{"direction": "truth", "layers": []}], "steering[0].layers", r"must not be empty"),
        ([{"direction": "truth", "layers": [1, 1]}], "steering[0].layers", r"duplicates"),
        ([{"direction": "partial", "layers": [0]}], "steering[0].layers", r"no vector at layers \[0\]"),
        ([{"direction": "truth", "strength": 1000}], "steering[0].strength", r"\|strength\| must be <= 64"),
        ([{"direction": "truth", "target": 1.0}], "steering[0].target", r"only valid with op 'clamp'"),
        ([{"direction": "truth"}] * 17, "steering", r"at most 16 steering operations"),
        ([{"direction": "truth", "layers": [1]}] * 5, "steering[4]", r"at most 4 operations may act on one layer"),
    ],
)
def test_resolution_errors_name_the_parameter(raw: list[dict[str, object]], param: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as ei:
        _resolve(raw)
    assert ei.value.param == param


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ([{"direction": "truth", "strength": float("nan")}], "steering[0].strength"),
        ([{"direction": "truth", "strength": float("inf")}], "steering[0].strength"),
        ([{"direction": "truth", "op": "multiply"}], "steering[0].op"),
        ([{"direction": "truth", "positions": "middle"}], "steering[0].positions"),
        ([{"direction": "truth", "layers": {"start": 3, "end": 1}}], "steering[0].layers.LayerRange"),
        ([{"direction": "truth", "colour": "red"}], "steering[0].colour"),
        ([{"strength": 1}], "steering[0].direction"),
        ({"direction": "truth"}, "steering"),
    ],
)
def test_parse_errors_name_the_parameter(raw: object, param: str) -> None:
    with pytest.raises(SpecError) as ei:
        parse_ops(raw)
    assert ei.value.param is not None and ei.value.param.startswith(param.split(".LayerRange")[0])


def test_clamp_without_stats_needs_target() -> None:
    b = make_bundle("nostats")
    meta = b.meta.model_copy(update={"layer_stats": {}})
    bare = type(b)(meta=meta, vectors=b.vectors, probe_weight=b.probe_weight)
    with pytest.raises(SpecError, match="give clamp a target") as ei:
        resolve([SteeringOp(direction="nostats", op="clamp")], {"nostats": bare}, 4)
    assert ei.value.param == "steering[0].target"


def test_cache_salt_separates_configs_and_is_stable() -> None:
    a = _resolve([{"direction": "truth", "strength": 2}])
    b = _resolve([{"direction": "truth", "strength": 2.5}])
    assert cache_salt([]) is None
    assert cache_salt(a) == cache_salt(_resolve([{"direction": "truth", "strength": 2.0, "layers": [0, 1]}]))
    assert cache_salt(a) != cache_salt(b)


def test_shorthand() -> None:
    assert parse_shorthand("truth:+4") == SteeringOp(direction="truth", strength=4.0)
    assert parse_shorthand("truth:-2.5@1-3") == SteeringOp(direction="truth", strength=-2.5, layers=[1, 2, 3])
    assert parse_shorthand("truth:ablate@2") == SteeringOp(direction="truth", op="ablate", layers=[2])
    assert to_ops(["truth:+1", {"direction": "truth", "layers": {"start": 0, "end": 2}}])[1].layers == LayerRange(
        start=0, end=2
    )
    with pytest.raises(SpecError, match="cannot parse steering shorthand"):
        parse_shorthand("truth+4")


def test_gates_resolve_round_trip_and_change_the_cache_salt() -> None:
    from steering.spec import ResolvedGate

    (g,) = _resolve([{"direction": "partial", "gate": {"probe": "truth", "below": 0.35, "window": 2}}])
    assert g.gate == ResolvedGate("truth", 0.35, None, 2, 0, "closed")
    assert ResolvedOp.from_wire(g.to_wire()) == g
    (plain,) = _resolve([{"direction": "partial"}])
    assert "gate" not in plain.to_wire() and cache_salt([plain]) != cache_salt([g])
    (outside,) = _resolve([{"direction": "truth", "gate": {"probe": "truth", "below": 2.0}}])  # always fires
    assert outside.gate is not None and outside.gate.fires(0.99)


@pytest.mark.parametrize(
    ("gate", "param"),
    [
        ({"probe": "partial", "below": 0.3}, "steering[0].gate.probe"),  # bundle without a probe
        ({"probe": "nope", "below": 0.3}, "steering[0].gate.probe"),
        ({"probe": "truth"}, "steering[0].gate"),
        ({"probe": "truth", "below": 0.3, "above": 0.6}, "steering[0].gate"),
        ({"probe": "truth", "below": "NaN"}, "steering[0].gate.below"),
        ({"probe": "truth", "below": 0.3, "window": 0}, "steering[0].gate.window"),
        ({"probe": "truth", "below": 0.3, "initial": "ajar"}, "steering[0].gate.initial"),
    ],
)
def test_bad_gates_name_the_parameter(gate: dict[str, object], param: str) -> None:
    with pytest.raises(SpecError) as e:
        _resolve([{"direction": "truth", "gate": gate}])
    assert e.value.param == param
