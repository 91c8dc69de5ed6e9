"""Activation capture: worker rows on the toy model (exact), and POST /v1/activations on the toy engine."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import steering.vllm.custom_op  # noqa: F401  (registers the truthsteer ops)
from server.app import create_app
from server.serving import Serving
from server.settings import Settings
from steering.engine import PreparedEngine
from steering.request import EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, wire
from steering.vllm.capture import ActivationCapture
from steering.vllm.runtime import SteeringRuntime
from steering.vllm.step_plan import StepPlanner
from tests.support.tiny import INFO, make_bundle
from tests.support.toy import H, L, Req, ToyModel, fake_runner
from tests.support.toy_engine import ToyEngine, ToyTokenizer

TRUTH = make_bundle("truth", seed=3, probe=False)


def streams(model: ToyModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's output stream (hidden + residual) of a plain forward, as the capture reads it."""
    out: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _a, o: out.append(o[0] + o[1])) for layer in model.layers]
    model(x)
    for h in hooks:
        h.remove()
    return out


def test_capture_reads_the_steered_stream_at_chosen_positions_over_chunks_and_mixed_batches() -> None:
    model = ToyModel()
    rt = SteeringRuntime(model.layers, [TRUTH], hidden_size=H, max_tokens=32, max_ops_per_layer=4,
                         device=torch.device("cpu"), dtype=torch.float32)
    cap = ActivationCapture(model.layers, H, 8, torch.device("cpu"), torch.float32)
    steer = wire([ResolvedOp("truth", "add", 3.0, (1,), "all")])
    extra = {EXTRA_ARGS_KEY: {"steering": steer, "capture": {"id": "c1", "layers": [1, 3], "positions": [0, 2, 4]}}}
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(0))
    other = torch.randn(2, H)
    with torch.inference_mode():
        # the prompt in two chunks, next to a steered request without capture
        got = []
        for n_comp, n_sched in ((0, 3), (3, 2)):
            reqs = [Req("b", 2, 0, 2, [ResolvedOp("truth", "add", -2.0, (1, 3), "all")]),
                    Req("a", 5, n_comp, n_sched, extra=extra)]
            plan = rt.planner.plan(fake_runner(reqs))
            rt.prepare_step(plan)
            cap.prepare(plan)
            got.append(streams(model, torch.cat([other, x[n_comp:n_comp + n_sched]])))
            cap.collect()
        taken = cap.take("c1")
    assert taken is not None and taken["layers"] == [1, 3] and taken["positions"] == [0, 2, 4]
    arr = np.frombuffer(taken["data"], "<f4").reshape(2, 3, H)
    # the same rows of the same (steered) forward: bit-identical, chunk by chunk
    for j, k in enumerate((1, 3)):
        expected = torch.stack([got[0][k][2 + 0], got[0][k][2 + 2], got[1][k][2 + 1]])
        assert np.array_equal(arr[j], expected.numpy())
    assert cap.take("c1") is None  # taken once
    assert not np.array_equal(arr[0][0], streams(ToyModel(), x)[1][0].detach().numpy())  # steering was on


def client(**settings: Any) -> TestClient:
    s = Settings(**{"served_model_name": "tiny", "max_model_len": 64, "activation_rows": 16, **settings})
    serving = Serving(s, ToyEngine([TRUTH], 0, 0), PreparedEngine("/models/tiny", INFO, {"truth": TRUTH}, {}),
                      ToyTokenizer())
    return TestClient(create_app(s, serving))


def decode(a: dict[str, Any]) -> np.ndarray:
    dt = {"float32": "<f4", "float16": "<f2"}[a["dtype"]]
    return np.frombuffer(base64.b64decode(a["data"]), dt).reshape(a["shape"])


def test_activations_endpoint_returns_the_engines_stream() -> None:
    engine_embed = ToyEngine([], 0, 0).embed
    with client() as c:
        body = {"model": "tiny", "input": ["abc", "hello"], "layers": [3, 0], "positions": [-1, 0]}
        r = c.post("/v1/activations", json=body)
        assert r.status_code == 200, r.text
        for item, text in zip(r.json()["data"], ["abc", "hello"], strict=True):
            ids = [ord(ch) for ch in text]
            ref = streams(ToyModel(), engine_embed[ids])
            assert item["tokens"] == len(ids) and item["positions"] == [len(ids) - 1, 0]
            for k in (3, 0):
                got = decode(item["layers"][str(k)])
                assert got.shape == (2, H)
                np.testing.assert_array_equal(got, ref[k][[len(ids) - 1, 0]].detach().numpy())
        half = c.post("/v1/activations", json={**body, "input": "abc", "positions": "all", "dtype": "float16"})
        got = decode(half.json()["data"][0]["layers"]["0"])
        ref0 = streams(ToyModel(), engine_embed[[97, 98, 99]])[0].detach().numpy()
        assert got.dtype == np.float16 and got.shape == (3, H)
        np.testing.assert_array_equal(got, ref0.astype(np.float16))


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"site": "mlp"}, 400, "site"),
    ({"site": "attn_heads"}, 400, "site"),
    ({"layers": [L]}, 400, "layers"),
    ({"layers": [1, 1]}, 400, "layers"),
    ({"layers": []}, 400, "layers"),
    ({"positions": [9]}, 400, "positions"),
    ({"positions": "first"}, 400, "positions"),
    ({"input": "x" * 20, "positions": "all"}, 413, "positions"),
    ({"model": "other"}, 404, "model"),
    ({"input": []}, 400, "input"),
])
def test_bad_activation_requests_name_the_parameter(body: dict[str, Any], status: int, param: str) -> None:
    with client() as c:
        r = c.post("/v1/activations", json={"model": "tiny", "input": "abc", "layers": [1], **body})
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param


def test_activation_limits() -> None:
    with client(max_activation_values=2 * H) as c:
        r = c.post("/v1/activations", json={"model": "tiny", "input": "abc", "layers": [0, 1, 2]})
        assert r.status_code == 413 and r.json()["error"]["param"] == "layers"
    with client(activation_rows=0) as c:
        r = c.post("/v1/activations", json={"model": "tiny", "input": "abc", "layers": [0]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "capture_disabled"


def test_probe_extraction_through_the_server_matches_the_engines_stream() -> None:
    from probes.remote import ServerExtractor

    engine_embed = ToyEngine([], 0, 0).embed
    texts = ["abc", "hello", "x", "truth"]
    with client() as c:
        acts = ServerExtractor("http://testserver", None, L, client=c).last_token(ToyTokenizer(), texts, batch_size=3)
    assert acts.shape == (len(texts), L, H) and acts.dtype == torch.float32
    for i, text in enumerate(texts):
        ref = streams(ToyModel(), engine_embed[[ord(ch) for ch in text]])
        assert torch.equal(acts[i], torch.stack([s[-1] for s in ref]).detach())


def test_unused_capture_rows_point_at_token_zero() -> None:
    """On accelerators the op copies every row: rows left from a longer step must stay valid."""
    model = ToyModel()
    cap = ActivationCapture(model.layers, H, 8, torch.device("cpu"), torch.float32)
    extra = {EXTRA_ARGS_KEY: {"capture": {"id": "c", "layers": [0], "positions": [0, 1, 2, 3, 4]}}}
    for reqs, expected in (([Req("a", 5, 0, 5, extra=extra)], [0, 1, 2, 3, 4, 0, 0, 0]),
                           ([Req("b", 5, 4, 1, extra=extra)], [0, 0, 0, 0, 0, 0, 0, 0])):
        cap.prepare(StepPlanner(L).plan(fake_runner(reqs)))
        assert cap.rows.tolist() == expected
