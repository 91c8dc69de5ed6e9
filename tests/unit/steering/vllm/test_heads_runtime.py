"""Head-level steering (site ``attn_heads``) in the worker runtime: exact tensors on tiny models.

``AttnModel`` is vLLM-shaped (flattened tokens, ``self_attn.o_proj``), the HF tiny Llama is the
eager reference architecture; both run the real :class:`SteeringRuntime` with its in-graph op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import steering.vllm.custom_op  # noqa: F401  (registers torch.ops.truthsteer.steer)
from steering.heads import HeadGeometry
from steering.model_info import ModelInfo
from steering.request import EXTRA_ARGS_KEY
from steering.spec import ResolvedOp, wire
from steering.vllm.runtime import SteeringRuntime
from tests.support.tiny import INFO, make_bundle
from tests.support.toy import H, Req, fake_runner
from tests.support.toy_heads import AttnModel, make_head_bundle

pytestmark = pytest.mark.usefixtures("ops_mode")  # both modes of the ops (tests/unit/conftest.py)

HEADS = make_head_bundle("iti", INFO, [(1, 0), (2, 1), (3, 0), (3, 1)], seed=5)
RESID = make_bundle("truth", seed=3)
L = INFO.num_layers


@pytest.fixture(autouse=True)
def _inference() -> Any:
    with torch.inference_mode():
        yield


def setup(world: int = 1, rank: int = 0, layers: int = L) -> tuple[AttnModel, SteeringRuntime]:
    model = AttnModel(H, layers, rank, world)
    rt = SteeringRuntime(model.layers, [RESID, HEADS], hidden_size=H, max_tokens=32, max_ops_per_layer=3,
                         device=torch.device("cpu"), dtype=torch.float32)
    return model, rt


def run(model: AttnModel, rt: SteeringRuntime, reqs: list[Req], x: torch.Tensor) -> torch.Tensor:
    rt.prepare_step(rt.planner.plan(fake_runner(reqs)))
    return model(x)


def reference(x: torch.Tensor, steering: list[ResolvedOp] | None, positions: np.ndarray, n_prompt: int) -> torch.Tensor:
    """Plain code: ``add`` puts ``strength * v`` on o_proj's input (heads) or on the stream (residual)."""
    model = AttnModel(H, L)
    mask = {"all": np.ones_like(positions, bool), "prompt": positions < n_prompt, "generated": positions >= n_prompt}
    h, r = x, None
    for k, layer in enumerate(model.layers):
        stream = h if r is None else h + r
        heads = torch.tanh(stream @ layer.self_attn.v)
        for op in steering or []:
            if op.site == "attn_heads" and k in op.layers:
                m = torch.from_numpy(mask[op.positions])[:, None]
                heads = torch.where(m, heads + op.strength * HEADS.head_vectors[k].reshape(-1), heads)
        h, r = layer.self_attn.o_proj(heads), stream
        for op in steering or []:
            if op.site == "residual" and k in op.layers:
                m = torch.from_numpy(mask[op.positions])[:, None]
                h = torch.where(m, h + op.strength * RESID.vectors[k], h)
    assert r is not None
    return h + r


HEAD_ADD = [ResolvedOp("iti", "add", 3.0, (1, 3), "all", site="attn_heads")]
MIX = [ResolvedOp("truth", "add", 2.0, (0, 1), "prompt"), ResolvedOp("iti", "add", -4.0, (2, 3), "generated",
       site="attn_heads"), ResolvedOp("iti", "add", 1.5, (3,), "all", site="attn_heads")]


def test_strength_zero_is_the_baseline_bit_for_bit() -> None:
    model, rt = setup()
    x = torch.randn(5, H)
    base = AttnModel(H, L)(x)
    zero = [ResolvedOp("iti", "add", 0.0, (1, 2, 3), "all", site="attn_heads")]
    assert torch.equal(run(model, rt, [Req("z", 5, 0, 5, zero)], x), base)
    assert torch.equal(run(model, rt, [Req("n", 5, 0, 5)], x), base)
    steered = run(model, rt, [Req("s", 5, 0, 5, HEAD_ADD)], x)
    assert not torch.allclose(steered, base, atol=1e-3)


def test_mixed_batch_rows_equal_their_solo_runs_and_the_reference() -> None:
    model, rt = setup()
    g = torch.Generator().manual_seed(0)
    reqs = [
        Req("heads", n_prompt=3, n_computed=0, n_sched=3, steering=HEAD_ADD),
        Req("none", n_prompt=5, n_computed=7, n_sched=1),
        Req("mix", n_prompt=4, n_computed=2, n_sched=4, steering=MIX),  # 2 prompt + 2 generated positions
        Req("resid", n_prompt=2, n_computed=9, n_sched=1, steering=[ResolvedOp("truth", "add", 3.0, (2,), "all")]),
    ]
    xs = [torch.randn(r.n_sched, H, generator=g) for r in reqs]
    batch = run(model, rt, reqs, torch.cat(xs))
    start = 0
    for r, x in zip(reqs, xs, strict=True):
        rows = batch[start:start + r.n_sched]
        start += r.n_sched
        solo = run(model, rt, [Req(r.rid + "-solo", r.n_prompt, r.n_computed, r.n_sched, r.steering)], x)
        assert torch.equal(rows, solo), r.rid
        pos = r.n_computed + np.arange(r.n_sched)
        torch.testing.assert_close(rows, reference(x, r.steering, pos, r.n_prompt), rtol=1e-5, atol=1e-5)
    assert torch.equal(batch[3:4], AttnModel(H, L)(xs[1]))
    assert rt.rejected == 0


def test_compiled_graph_sees_head_table_updates() -> None:
    model, rt = setup()
    compiled = torch.compile(model, backend="inductor", dynamic=True, fullgraph=True)
    x = torch.randn(3, H)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("p", 3, 0, 3)])))
    first = compiled(x)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("s", 3, 0, 3, HEAD_ADD)])))
    torch.testing.assert_close(compiled(x), reference(x, HEAD_ADD, np.arange(3), 3), rtol=1e-5, atol=1e-5)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("p2", 3, 0, 3)])))
    assert torch.equal(compiled(x), first)


def test_tensor_parallel_shards_add_up_to_the_single_rank_result() -> None:
    """Two ranks, each with its contiguous head and the full vector's norm: the concatenated
    steered o_proj inputs equal one rank's, and the partial projections sum to its output."""
    x = torch.randn(4, H)
    op = [ResolvedOp("iti", "add", 2.5, (1,), "all", site="attn_heads")]
    full_model, full_rt = setup()
    full = run(full_model, full_rt, [Req("a", 4, 0, 4, op)], x)
    h0, r0 = full_model.layers[0](x, None)  # layer 1's input stream (all-reduced, the same on every rank)
    seen, parts = [], []
    for rank in range(2):
        model, rt = setup(world=2, rank=rank)
        rt.prepare_step(rt.planner.plan(fake_runner([Req("a", 4, 0, 4, op)])))
        layer = model.layers[1]
        parts.append(layer.self_attn(h0 + r0))
        seen.append(layer.self_attn.o_proj.seen)
        assert rt.heads.buffers[1]["table"].shape[1] == 4  # one head of 4 columns per rank
    full_layer = full_model.layers[1].self_attn
    assert full_layer.o_proj.seen is not None
    torch.testing.assert_close(torch.cat(seen, 1), full_layer.o_proj.seen, rtol=1e-6, atol=1e-6)
    expected = full_layer.o_proj.seen @ full_layer.o_proj.weight
    torch.testing.assert_close(parts[0] + parts[1], expected, rtol=1e-5, atol=1e-5)
    assert full.shape == x.shape


def test_geometry_shards_are_contiguous_heads() -> None:
    v = torch.arange(6 * 3, dtype=torch.float32)
    shards = [HeadGeometry(6, 3, r, 3).shard(v) for r in range(3)]
    assert [s.tolist() for s in shards] == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18))]
    assert torch.equal(HeadGeometry(6, 3).shard(v.reshape(6, 3)), v)
    with pytest.raises(ValueError, match="do not split"):
        HeadGeometry(9, 64, 0, 2)


@pytest.mark.parametrize("bad", [
    {"direction": "iti", "op": "ablate", "strength": 1, "layers": [1], "positions": "all", "site": "attn_heads"},
    {"direction": "iti", "op": "add", "strength": 1, "layers": [1], "positions": "all", "site": "mlp"},
    {"direction": "truth", "op": "add", "strength": 1, "layers": [1], "positions": "all", "site": "attn_heads"},
    {"direction": "iti", "op": "add", "strength": 1, "layers": [0], "positions": "all", "site": "attn_heads"},
])
def test_invalid_head_specs_on_the_worker_run_unsteered(bad: dict[str, Any]) -> None:
    model, rt = setup()
    x = torch.randn(2, H)
    out = run(model, rt, [Req("bad", 2, 0, 2, extra={EXTRA_ARGS_KEY: {"steering": [bad]}}),
                          Req("ok", 2, 0, 2, HEAD_ADD)], torch.cat([x, x]))
    assert rt.rejected == 1
    assert torch.equal(out[:2], AttnModel(H, L)(x))
    assert not torch.equal(out[2:], out[:2])


def _tiny_llama() -> tuple[Any, ModelInfo]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    return model, ModelInfo.from_hf_config("tiny-llama", cfg, "sha256:tiny-llama")


def test_hf_tiny_llama_equals_an_eager_reference_that_adds_to_o_proj_input() -> None:
    model, info = _tiny_llama()
    assert (info.num_heads, info.head_dim) == (2, 8)
    bundle = make_head_bundle("iti", info, [(0, 1), (2, 0), (2, 1)], num_heads=2, head_dim=8, seed=9)
    ids = torch.tensor([[3, 7, 1, 12, 5, 9]])
    base = model(ids).logits
    op = [ResolvedOp("iti", "add", 3.0, (0, 2), "all", site="attn_heads")]

    def add_pre_hook(k: int) -> Any:
        return lambda _m, args: (args[0] + 3.0 * bundle.head_vectors[k].reshape(-1), *args[1:])

    handles = [model.model.layers[k].self_attn.o_proj.register_forward_pre_hook(add_pre_hook(k)) for k in (0, 2)]
    expected = model(ids).logits
    for hd in handles:
        hd.remove()
    rt = SteeringRuntime(model.model.layers, [bundle], hidden_size=16, max_tokens=16, max_ops_per_layer=2,
                         device=torch.device("cpu"), dtype=torch.float32)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("a", 6, 0, 6, op)])))
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, base, atol=1e-3)
    rt.prepare_step(rt.planner.plan(fake_runner([Req("z", 6, 0, 6, [ResolvedOp("iti", "add", 0.0, (0, 2), "all", site="attn_heads")])])))
    assert torch.equal(model(ids).logits, base)
    assert wire(op)[0]["site"] == "attn_heads"


def test_inline_head_vectors_steer_bit_identically_to_the_bundles() -> None:
    from steering.inline import InlineVectors
    from steering.spec import parse_ops, resolve

    info = ModelInfo("tiny", H, L, fingerprint="sha256:tiny", num_heads=2, head_dim=4)
    model = AttnModel(H, L)
    rt = SteeringRuntime(model.layers, [RESID, HEADS], hidden_size=H, max_tokens=32, max_ops_per_layer=3,
                         device=torch.device("cpu"), dtype=torch.float32, max_inline=2)
    inline = InlineVectors(info, heads=True)
    raw = [{"vector": {str(k): HEADS.head_vectors[k].reshape(-1).tolist() for k in (1, 3)}, "site": "attn_heads",
            "strength": 3.0},
           {"vector": {"2": RESID.vectors[2].tolist()}, "strength": 2.0}]
    ops = resolve(parse_ops(raw), {}, L, inline=inline)
    extra = {EXTRA_ARGS_KEY: {"steering": wire(ops), "vectors": inline.payload()}}
    named = [*HEAD_ADD, ResolvedOp("truth", "add", 2.0, (2,), "all")]
    x = torch.randn(3, H)
    out = run(model, rt, [Req("inline", 3, 0, 3, extra=extra), Req("named", 3, 0, 3, named)], torch.cat([x, x]))
    assert rt.rejected == 0
    assert torch.equal(out[:3], out[3:])
    assert not torch.equal(out[:3], AttnModel(H, L)(x))
    run(model, rt, [Req("next", 3, 0, 3)], x)  # both requests left: their inline rows are free again
    assert rt.heads.dynamic.inline_in_use == 0 and rt.dynamic.inline_in_use == 0
