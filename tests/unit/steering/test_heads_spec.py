"""Head-level steering at the point of entry: the ``site`` field, head vectors in bundles, HTTP errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from steering.bundle import DirectionBundle, check_compatible, load_bundle, save_bundle
from steering.errors import BundleError, SpecError
from steering.inline import InlineVectors
from steering.model_info import ModelInfo
from steering.spec import Limits, ResolvedOp, cache_salt, parse_ops, resolve, wire
from tests.support.fakes import KEY, fake_serving
from tests.support.tiny import INFO, make_bundle
from tests.support.toy_heads import make_head_bundle

HEADS = make_head_bundle("iti", INFO, [(1, 0), (3, 1)], seed=2, strength=5.0)
BOTH = make_head_bundle("both", INFO, [(2, 1)], seed=3, residual=(0, 1, 2))
BUNDLES = {"iti": HEADS, "both": BOTH, "truth": make_bundle("truth")}


def res(raw: list[dict[str, Any]], **kw: Any) -> list[ResolvedOp]:
    return resolve(parse_ops(raw), BUNDLES, INFO.num_layers, **kw)


def test_head_ops_resolve_to_the_bundles_heads_and_carry_the_site_on_the_wire() -> None:
    (op,) = res([{"direction": "iti", "site": "attn_heads"}])
    assert (op.layers, op.strength, op.site) == ((1, 3), 5.0, "attn_heads")
    assert wire([op])[0]["site"] == "attn_heads"
    assert ResolvedOp.from_wire(wire([op])[0]) == op
    (op2,) = res([{"direction": "both", "site": "attn_heads", "layers": [2], "strength": -3}])
    assert (op2.layers, op2.strength) == ((2,), -3.0)
    (resid,) = res([{"direction": "both"}])
    assert resid.site == "residual" and resid.layers == (0, 1)


def test_residual_ops_keep_their_wire_form_and_cache_salt() -> None:
    (op,) = res([{"direction": "truth", "strength": 2.0, "site": "residual"}])
    assert "site" not in wire([op])[0]
    blob = json.dumps([{"direction": "truth", "op": "add", "strength": 2.0, "layers": [0, 1], "positions": "all",
                        "targets": []}], sort_keys=True, separators=(",", ":"))
    import hashlib

    assert cache_salt([op]) == "truthsteer-" + hashlib.sha256(blob.encode()).hexdigest()[:32]
    heads = res([{"direction": "both", "site": "attn_heads"}])
    assert cache_salt(heads) != cache_salt(res([{"direction": "both", "layers": [2]}]))


@pytest.mark.parametrize(("raw", "param", "match"), [
    ({"direction": "iti", "site": "attn_heads", "op": "ablate"}, "steering[0].op", "only 'add'"),
    ({"direction": "iti", "site": "attn_heads", "op": "clamp", "target": 1}, "steering[0].op", "only 'add'"),
    ({"direction": "truth", "site": "attn_heads"}, "steering[0].site", "no attention-head vectors"),
    ({"direction": "iti", "site": "attn_heads", "layers": [0, 1]}, "steering[0].layers", "no head vectors at layers"),
    ({"direction": "iti", "site": "attn_heads", "layers": {"start": 1, "end": 9}}, "steering[0].layers", r"\[4, 5, 6, 7, 8\] outside"),
    ({"direction": "iti"}, "steering[0].site", "attention-head vectors only"),
    ({"direction": "iti", "site": "mlp"}, "steering[0].site", "attn_heads"),
    ({"vector": [0.5] * 8, "layers": [1], "site": "attn_heads"}, "steering[0].site", "server started with a bundle"),
    ({"direction": "iti", "site": "attn_heads", "strength": 100}, "steering[0].strength", "strength"),
])
def test_unsupported_head_ops_name_the_parameter(raw: dict[str, Any], param: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as e:
        res([raw], inline=InlineVectors(INFO))
    assert e.value.param == param


def test_live_registry_head_ops_are_refused_and_slots_count_per_site() -> None:
    with pytest.raises(SpecError, match="live-registry") as e:
        res([{"direction": "iti", "site": "attn_heads"}], refs={"iti": "reg:0:abc"})
    assert e.value.param == "steering[0].site"
    four = [{"direction": "both", "layers": [2]}] * 2 + [{"direction": "both", "site": "attn_heads"}] * 2
    assert len(res(four, limits=Limits(max_ops_per_layer=2))) == 4
    with pytest.raises(SpecError, match="at most 2"):
        res([{"direction": "both", "site": "attn_heads"}] * 3, limits=Limits(max_ops_per_layer=2))


def test_head_bundles_round_trip(tmp_path: Path) -> None:
    path = save_bundle(BOTH, tmp_path / "both.safetensors")
    back = load_bundle(path, ModelInfo("tiny", 8, 4, num_heads=2, head_dim=4))
    assert back.meta.heads == BOTH.meta.heads
    assert set(back.head_vectors) == {2} and torch.equal(back.head_vectors[2], BOTH.head_vectors[2])
    assert torch.equal(back.vectors[1], BOTH.vectors[1])


def _with(bundle: DirectionBundle, heads: dict[int, torch.Tensor] | None = None, **meta: Any) -> DirectionBundle:
    m = bundle.meta.model_copy(update={"heads": bundle.meta.heads.model_copy(update=meta)} if meta else {})
    return DirectionBundle(meta=m, vectors=bundle.vectors, head_vectors=bundle.head_vectors if heads is None else heads)


@pytest.mark.parametrize(("change", "match"), [
    ({"selected": [(1, 0), (3, 2)]}, r"heads.selected: \(3, 2\): head outside"),
    ({"selected": [(1, 0), (2, 1)]}, "layer 2 has no head tensor"),
    ({"selected": [(1, 0)]}, r"heads.3: heads \[1\] are not in heads.selected"),
    ({"layers": [1]}, "do not match heads.layers"),
    ({"layers": [1, 3, 7]}, "outside"),
    ({"num_heads": 4, "head_dim": 2}, r"heads.1: shape \(2, 4\), expected \(4, 2\)"),
])
def test_malformed_head_vectors_are_rejected_naming_the_field(change: dict[str, Any], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        _with(HEADS, **change)


def test_non_finite_head_vectors_and_wrong_models_are_rejected() -> None:
    bad = {k: v.clone() for k, v in HEADS.head_vectors.items()}
    bad[1][0, 0] = float("nan")
    with pytest.raises(BundleError, match=r"heads\.1: contains NaN"):
        _with(HEADS, heads=bad)
    with pytest.raises(BundleError, match="heads: 2 heads x 4 != served model's 4 x 2"):
        check_compatible(HEADS, ModelInfo("tiny", 8, 4, fingerprint="sha256:tiny", num_heads=4, head_dim=2))
    check_compatible(HEADS, ModelInfo("tiny", 8, 4, fingerprint="sha256:tiny", num_heads=2, head_dim=4))


@pytest.fixture
def client() -> Any:
    settings = Settings(api_keys=[KEY], served_model_name="tiny", max_model_len=64)
    serving = fake_serving(settings, BOTH.__class__(meta=BOTH.meta.model_copy(update={"name": "truth"}),
                                                   vectors=BOTH.vectors, head_vectors=BOTH.head_vectors))
    with TestClient(create_app(settings, serving)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        c.engine = serving.engine  # type: ignore[attr-defined]
        yield c


def test_http_head_steering_travels_to_the_engine_and_errors_are_openai_shaped(client: Any) -> None:
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 2}
    r = client.post("/v1/completions", json={**body, "steering": [{"direction": "truth", "site": "attn_heads"}]})
    assert r.status_code == 200, r.text
    sent = client.engine.requests[-1][1].extra_args["truthsteer"]["steering"]
    assert sent == [{"direction": "truth", "op": "add", "strength": 2.0, "layers": [2], "positions": "all",
                     "targets": [], "site": "attn_heads"}]
    for op, param in (({"site": "attn_heads", "op": "ablate"}, "steering[0].op"),
                      ({"site": "attn_heads", "layers": [0]}, "steering[0].layers"),
                      ({"site": "heads"}, "steering[0].site")):
        r = client.post("/v1/completions", json={**body, "steering": [{"direction": "truth", **op}]})
        assert r.status_code in (400, 422), r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error", err
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SteeringOp"]
    assert schema["properties"]["site"]["enum"] == ["residual", "attn_heads"]
    card = client.get("/v1/directions").json()["data"][0]
    assert card["heads"]["selected"] == [[2, 1]] and card["heads"]["num_heads"] == 2


def test_the_live_registry_refuses_head_bundles(tmp_path: Path) -> None:
    import base64

    from server.directions_api import DirectionPush, decode_upload
    from server.errors import APIError

    data = base64.b64encode(save_bundle(BOTH, tmp_path / "b.safetensors").read_bytes()).decode()
    with pytest.raises(APIError, match="loaded at start-up only") as e:
        decode_upload(DirectionPush(data=data), INFO, False)
    assert e.value.param == "data"


HINFO = ModelInfo("tiny", 8, 4, fingerprint="sha256:tiny", num_heads=2, head_dim=4)


def test_inline_head_vectors_resolve_with_their_own_digest_and_payload() -> None:
    vec = [0.0] * 4 + [0.5, -1.0, 2.0, 0.25]  # head 1 only
    inline = InlineVectors(HINFO, heads=True)
    (op,) = res([{"vector": {"2": vec}, "site": "attn_heads", "strength": 3}], inline=inline)
    assert op.site == "attn_heads" and op.layers == (2,) and op.vector.startswith("inline:")
    (entry,) = inline.payload().values()
    assert entry["site"] == "attn_heads" and entry["layers"] == [2] and len(entry["data"]) == 8 * 4
    (bundle,) = inline.bundles.values()
    assert bundle.meta.heads is not None and bundle.meta.heads.selected == [(2, 1)]
    resid = InlineVectors(HINFO, heads=True)
    (rop,) = res([{"vector": {"2": vec}}], inline=resid)
    assert rop.vector != op.vector  # same bytes, other site: other digest (and cache salt)
    with pytest.raises(SpecError, match="heads x head size is 8") as e:
        res([{"vector": [1.0] * 6, "layers": [1], "site": "attn_heads"}], inline=InlineVectors(HINFO, heads=True))
    assert e.value.param == "steering[0].vector"
