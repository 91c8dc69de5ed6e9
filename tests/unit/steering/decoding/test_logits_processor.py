"""Contrastive decoding's worker side on the vLLM-shaped toy model: the stash op and the logits
processor with fake batch updates (exact tensors, isolation of rows without a config)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from steering.decoding.contrastive import apply_contrast
from steering.decoding.logits_processor import premature_logits, sparse_ok
from steering.decoding.spec import ResolvedDecoding
from steering.decoding.stash import HiddenStash
from steering.request import DECODING, EXTRA_ARGS_KEY, decoding_from_wire, from_wire
from steering.spec import ResolvedOp
from steering.vllm.runtime import SteeringRuntime
from tests.support.logits_processor import (
    DOLA,
    FakeStash,
    V,
    attach,
    decoding_req,
    norm_fn,
    processor,
    setup_step,
    toy_streams,
)
from tests.support.tiny import make_bundle
from tests.support.toy import H, L, Req, ToyModel, decoding_planner, fake_runner

pytestmark = pytest.mark.usefixtures("ops_mode")  # both modes of the ops (tests/unit/conftest.py)

FIXED = ResolvedDecoding("contrast", (0,), (1.0,), alpha=0.1, repetition_penalty=1.3)
FUSED = ResolvedDecoding("contrast", (2, 3), (0.25, 0.75), alpha=0.5, entropy_threshold=0.0)
TRUTH = make_bundle("truth", seed=3, probe=False)


@pytest.fixture(autouse=True)
def _inference() -> Any:
    with torch.inference_mode():
        yield


def stash_step(stash: HiddenStash, reqs: list[Req]) -> None:
    stash.prepare(decoding_planner().plan(fake_runner(reqs)))


# ---------------------------------------------------------------------------------------- stash op
def test_stash_copies_the_sampling_rows_of_contrasting_requests_after_steering(ops_mode: str) -> None:
    model = ToyModel()
    add = [ResolvedOp("truth", "add", 2.0, (1,), "all")]
    rt = SteeringRuntime(model.layers, [TRUTH], hidden_size=H, max_tokens=32, max_ops_per_layer=2,
                         device=torch.device("cpu"), dtype=torch.float32)
    stash = HiddenStash(model.layers, H, max_reqs=8, device=torch.device("cpu"), dtype=torch.float32)
    reqs = [
        decoding_req("a", 3, 0, 3, ResolvedDecoding("dola", (0, 2), alpha=0.1)),  # prefill: row 2
        decoding_req("plain", 4, 6, 1, None),  # row 3: no config
        decoding_req("chunk", 9, 0, 4, DOLA),  # partial prefill: samples nothing
        decoding_req("d", 2, 5, 1, ResolvedDecoding("contrast", (2,), (1.0,)), steering=add),  # row 8
    ]
    x = torch.randn(9, H, generator=torch.Generator().manual_seed(0))
    rt.planner.decoding = True
    plan = rt.planner.plan(fake_runner(reqs))
    rt.prepare_step(plan)
    stash.prepare(plan)
    assert [c is not None for c in stash.step_configs] == [True, False, False, True]
    assert [int(stash.actives[k]) for k in range(L)] == [4, 0, 4, 0]
    model(x)
    plain = toy_streams(x)
    steered = toy_streams(x, {1: 2.0 * TRUTH.vectors[1]})
    assert torch.equal(stash.outs[0][0], plain[0][2])  # embeddings, from the pre-hook on layer 0
    assert torch.equal(stash.outs[2][0], plain[2][2])  # "a" is not steered
    assert torch.allclose(stash.outs[2][3], steered[2][8], atol=1e-6)  # "d": after its steering
    assert not torch.allclose(stash.outs[2][3], plain[2][8], atol=1e-3)
    if ops_mode == "skip_idle":  # idle layers are skipped (all-slots mode writes them; nobody reads them)
        assert torch.equal(stash.outs[1], torch.zeros(8, H)) and torch.equal(stash.outs[3], torch.zeros(8, H))
    assert stash.hidden(2, torch.tensor([3, 0])).tolist() == [stash.outs[2][3].tolist(), stash.outs[2][0].tolist()]


def test_stash_is_inert_when_no_request_contrasts(ops_mode: str) -> None:
    model = ToyModel()
    stash = HiddenStash(model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    stash_step(stash, [decoding_req("a", 2, 0, 2, ResolvedDecoding("contrast", (1,), (1.0,)))])
    model(torch.randn(2, H, generator=g))
    before = stash.outs[1].clone()
    stash_step(stash, [decoding_req("b", 2, 0, 2, None)])  # the next step: nobody contrasts
    assert all(int(a) == 0 for a in stash.actives.values())
    assert torch.equal(stash.rows, torch.zeros(4, dtype=torch.int64))  # in range for any later step
    y = torch.randn(2, H, generator=g)
    assert torch.equal(model(y), toy_streams(y)[-1])  # hooks never change the stream
    if ops_mode == "skip_idle":  # skipped; all-slots mode copies row 0 again, which nobody reads
        assert torch.equal(stash.outs[1], before)


def test_stash_in_a_compiled_graph_sees_row_updates() -> None:
    model = ToyModel()
    stash = HiddenStash(model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, H, generator=g)
    cfg = ResolvedDecoding("contrast", (0, 3), (0.5, 0.5))
    for reqs in ([decoding_req("a", 2, 0, 2, cfg), decoding_req("b", 3, 0, 3, cfg)],
                 [decoding_req("a", 4, 0, 4, cfg), decoding_req("b", 2, 4, 1, cfg)]):
        stash_step(stash, reqs)
        compiled(x)
        ref = toy_streams(x)
        last = np.cumsum([r.n_sched for r in reqs]) - 1
        for k in (0, 3):
            assert torch.allclose(stash.outs[k][:2], ref[k][last], atol=1e-6), (k, last)


def test_parse_rejects_junk_and_stash_counts_it() -> None:
    assert decoding_from_wire({"method": "none"}, L) is None
    assert from_wire(None, L) is None
    for bad in ({"method": "dola", "layers": [L]}, {"method": "dola", "layers": []}, "dola",
                {"method": "contrast", "layers": [1, 2], "weights": [1.0]}, {"method": "beam", "layers": [1]}):
        with pytest.raises((ValueError, TypeError, KeyError)):
            decoding_from_wire(bad, L)
    model = ToyModel()
    stash = HiddenStash(model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32)
    junk = Req("j", 2, 0, 2, extra={EXTRA_ARGS_KEY: {DECODING: {"method": "dola", "layers": [99]}}})
    stash_step(stash, [junk])
    assert stash.rejected == 1 and stash.step_configs == [None]


# ---------------------------------------------------------------------------------------- processor
def params(cfg: ResolvedDecoding | None) -> SamplingParams:
    extra = {EXTRA_ARGS_KEY: {DECODING: cfg.to_wire()}} if cfg is not None else None
    return SamplingParams(temperature=0.0, extra_args=extra)


def head_fn(w: torch.Tensor, scale: torch.Tensor) -> Any:
    """Final norm + LM head in one (what the processor computes for a premature layer)."""
    return lambda h: norm_fn(scale)(h) @ w.t()


def test_processor_rows_match_apply_contrast_and_other_rows_are_untouched() -> None:
    logits, hidden, w, scale = setup_step()
    head = head_fn(w, scale)
    configs: list[ResolvedDecoding | None] = [DOLA, None, FIXED, FUSED, None]
    lp = processor()
    prompts = [[1, 2], [3], [4, 4, 9], [5], [6]]
    outputs: list[list[int]] = [[7], [], [2], [], [1]]
    lp.update_state(BatchUpdate(5, [], [(i, params(c), prompts[i], outputs[i]) for i, c in enumerate(configs)], []))
    attach(lp, configs, hidden, w, scale)
    original = logits.clone()
    got = lp.apply(logits)
    assert got is logits  # in place, as vLLM allows
    for r in (1, 4):
        assert torch.equal(got[r], original[r])
    premature = {k: head(hidden[k]) for k in range(L)}
    expected = apply_contrast(original, premature, configs, [p + o for p, o in zip(prompts, outputs, strict=True)])
    assert torch.equal(got, expected)
    assert lp.contrasted_rows == 3
    assert not lp.is_argmax_invariant()


def test_processor_follows_removes_moves_swaps_and_live_output_lists() -> None:
    logits, hidden, w, scale = setup_step(3)
    head = head_fn(w, scale)
    lp = processor()
    out_a: list[int] = []
    pen = ResolvedDecoding("dola", (1,), alpha=0.3, repetition_penalty=2.0)
    lp.update_state(BatchUpdate(3, [], [(0, params(pen), [1], out_a), (1, params(None), [2], []),
                                        (2, params(FIXED), [3], [])], []))
    # row 0 leaves, row 2 moves to 0, a new plain request takes row 2; then 0 and 1 swap
    lp.update_state(BatchUpdate(2, [0], [], [(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    lp.update_state(BatchUpdate(3, [], [(2, params(None), [9], [])], [(0, 1, MoveDirectionality.SWAP)]))
    assert sorted(lp.rows) == [1] and lp.rows[1].prompt == [3]  # FIXED's row
    lp.update_state(BatchUpdate(3, [], [(0, params(pen), [5], out_a)], []))
    out_a.extend([4, 6])  # vLLM appends to the live list between steps
    configs: list[ResolvedDecoding | None] = [pen, FIXED, None]
    attach(lp, configs, hidden, w, scale)
    original = logits.clone()
    got = lp.apply(logits.clone())
    expected = apply_contrast(original, {k: head(hidden[k]) for k in range(L)}, configs, [[5, 4, 6], [3], [9]])
    assert torch.equal(got, expected)
    assert lp.update_state(None) is None and sorted(lp.rows) == [0, 1]


def test_processor_leaves_rows_alone_without_a_config_or_when_the_gate_holds() -> None:
    logits, hidden, w, scale = setup_step(3)
    lp = processor()
    gate = ResolvedDecoding("dola", (1, 2), entropy_threshold=50.0)  # above ln V: never contrasts
    lp.update_state(BatchUpdate(3, [], [(0, params(DOLA), [1], []), (1, params(gate), [1], []),
                                        (2, params(None), [1], [])], []))
    # the step plan has no config for row 0 (partial prefill) nor row 2 (plain)
    attach(lp, [None, gate, None], hidden, w, scale)
    original = logits.clone()
    got = lp.apply(logits)
    assert torch.equal(got, original)
    assert lp.contrasted_rows == 0


def test_premature_logits_compute_only_the_pairs_used_in_one_call() -> None:
    _, hidden, w, scale = setup_step(4)
    calls: list[int] = []
    base = head_fn(w, scale)

    def head(h: torch.Tensor) -> torch.Tensor:
        calls.append(h.shape[0])
        return h @ w.t()

    configs = [DOLA, FIXED, DOLA]  # layers (1, 3), (0,), (1, 3)
    out = premature_logits(FakeStash([], hidden), norm_fn(scale), head, [3, 0, 2], configs)  # type: ignore[arg-type]
    assert calls == [5] and sorted(out) == [0, 1, 3]
    assert torch.allclose(out[1][[0, 2]], base(hidden[1][[3, 2]]), atol=1e-5)
    assert torch.allclose(out[0][1], base(hidden[0][[0]])[0], atol=1e-5)
    assert torch.equal(out[0][0], torch.zeros(V)) and torch.equal(out[3][1], torch.zeros(V))
    assert math.isfinite(float(out[3].sum()))


def test_sparse_contrast_equals_the_full_one_up_to_a_constant_per_row() -> None:
    """The per-row log-normaliser of the premature layers cancels in the sampler: the sparse path's
    scores are the full path's minus one constant per row, with the same -inf set and argmax."""
    logits, hidden, w, scale = setup_step(7)
    one = ResolvedDecoding("dola", (2,), alpha=0.05)  # DoLa with one candidate: a fixed contrast
    wide = ResolvedDecoding("contrast", (0, 1, 3), (0.2, 0.3, 0.5), alpha=0.01)
    # DOLA, FIXED (repetition penalty) and alpha 0 (the whole vocabulary is plausible): full path
    open_ = ResolvedDecoding("contrast", (1,), (1.0,), alpha=0.0)
    assert not sparse_ok(open_) and sparse_ok(one) and sparse_ok(wide)
    configs: list[ResolvedDecoding | None] = [FUSED, None, one, wide, DOLA, FIXED, open_]
    histories = [[1], [2], [3], [4], [5], [6, 2], [0]]
    full, sparse = processor(), processor()
    for lp, sp in ((full, False), (sparse, True)):
        lp.update_state(BatchUpdate(7, [], [(i, params(c), histories[i], []) for i, c in enumerate(configs)], []))
        attach(lp, configs, hidden, w, scale, sparse=sp)
    a, b = full.apply(logits.clone()), sparse.apply(logits.clone())
    assert torch.equal(a[1], logits[1]) and torch.equal(b[1], logits[1])
    assert torch.equal(a[4:], b[4:])  # full path in both
    assert bool(torch.isfinite(a[6]).all())  # alpha 0: every token keeps a finite score
    for r in (0, 2, 3):
        finite = torch.isfinite(a[r])
        assert torch.equal(finite, torch.isfinite(b[r])) and int(finite.sum()) >= 1
        shift = a[r][finite] - b[r][finite]
        cfg = configs[r]
        assert cfg is not None
        ws = cfg.weights or (1.0,)
        lse = sum(wk * torch.logsumexp(head_fn(w, scale)(hidden[k][r]), -1) for wk, k in zip(ws, cfg.layers, strict=True))
        assert torch.allclose(shift, torch.full_like(shift, float(lse)), atol=1e-4), r
        assert int(a[r].argmax()) == int(b[r].argmax())
        assert torch.allclose(torch.softmax(a[r], -1), torch.softmax(b[r], -1), atol=1e-6)
