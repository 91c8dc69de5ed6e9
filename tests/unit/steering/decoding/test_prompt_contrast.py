"""Echo scoring under ``decoding`` on the vLLM-shaped toy model: which prompt rows the stash takes
(chunked prefill, mixed batches), and the contrasted prompt logprobs written through vLLM's own
``GPUModelRunner._get_prompt_logprobs_dict`` (called unbound on a fake runner), exact tensors."""

from __future__ import annotations

import dataclasses
import inspect
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from vllm.v1.sample.sampler import Sampler
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from steering.decoding import prompt_contrast
from steering.decoding.contrastive import apply_contrast, log_softmax
from steering.decoding.spec import ResolvedDecoding
from steering.decoding.stash import HiddenStash, PromptSegment
from tests.support.logits_processor import (
    DOLA,
    FakeStash,
    attach,
    decoding_req,
    norm_fn,
    processor,
    setup_step,
    toy_streams,
)
from tests.support.toy import H, L, Req, ToyModel, decoding_planner, fake_runner

pytestmark = pytest.mark.usefixtures("ops_mode")  # both modes of the ops (tests/unit/conftest.py)

FIXED = ResolvedDecoding("contrast", (2,), (1.0,), alpha=0.05)
# vLLM's own method: an in-process engine earlier in the session has the plugin's wrapper installed
# on the class (wrapping it again here would contrast twice and let the wrapper clear the stash)
VLLM_PROMPT_LOGPROBS = inspect.unwrap(GPUModelRunner._get_prompt_logprobs_dict)
FUSED = ResolvedDecoding("contrast", (0, 3), (0.4, 0.6), alpha=0.3)


@pytest.fixture(autouse=True)
def _inference() -> Any:
    with torch.inference_mode():
        yield


def prepare(stash: HiddenStash, reqs: list[Req], echo: set[str]) -> None:
    r = fake_runner(reqs)
    r.num_prompt_logprobs = {rid: 1 for rid in echo}
    stash.prepare(decoding_planner().plan(r))


# ---------------------------------------------------------------------------------------- stash rows
def test_stash_takes_the_prompt_rows_vllm_scores_after_the_sampling_rows() -> None:
    model = ToyModel()
    stash = HiddenStash(model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32, prompt_rows=16)
    reqs = [
        decoding_req("full", 5, 0, 5, DOLA),  # whole prompt: positions 0..3 (4 predicts the first output)
        decoding_req("chunk", 9, 0, 3, FIXED),  # first chunk: 0..2, samples nothing
        decoding_req("plain", 4, 0, 4, None),  # echo without decoding: vLLM's own logprobs
        decoding_req("gen", 3, 0, 3, FUSED),  # decoding, no echo: sampling row only
    ]
    x = torch.randn(15, H, generator=torch.Generator().manual_seed(0))
    prepare(stash, reqs, {"full", "chunk", "plain"})
    assert stash.prompt_segments == {"full": PromptSegment(DOLA, 0, 4, 0, 4), "chunk": PromptSegment(FIXED, 0, 3, 5, 8)}
    assert [c is not None for c in stash.step_configs] == [True, False, False, True]
    assert stash.rows[:11].tolist() == [4, 7, 11, 14, 0, 1, 2, 3, 5, 6, 7]
    assert [int(stash.actives[k]) for k in range(L)] == [11, 11, 11, 11]  # DOLA 1,3; FIXED 2; FUSED 0,3
    model(x)
    ref = toy_streams(x)
    for k in range(L):
        assert torch.equal(stash.outs[k][4:8], ref[k][0:4]) and torch.equal(stash.outs[k][8:11], ref[k][5:8])
    # the sampling rows are what a stash without prompt rows holds, bit for bit
    plain_model = ToyModel()
    plain_stash = HiddenStash(plain_model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32)
    prepare(plain_stash, reqs, set())
    plain_model(x)
    for k, row in ((1, 0), (3, 0), (0, 3), (3, 3)):  # the (layer, row) pairs the sampling configs read
        assert torch.equal(stash.outs[k][row], plain_stash.outs[k][row])

    # the next step: the chunk's last part (positions 3..7); nothing else owes prompt logprobs
    nxt = [decoding_req("chunk", 9, 3, 6, FIXED), decoding_req("gen", 3, 3, 1, FUSED)]
    prepare(stash, nxt, {"chunk"})
    assert stash.prompt_segments == {"chunk": PromptSegment(FIXED, 3, 5, 0, 2)}
    assert stash.rows[:7].tolist() == [5, 6, 0, 1, 2, 3, 4]
    # a prompt scored up to its last position owes nothing more (vLLM returns it with the next step)
    prepare(stash, [decoding_req("chunk", 9, 8, 1, FIXED)], {"chunk"})
    assert stash.prompt_segments == {} and stash.step_configs == [FIXED]


def test_stash_without_prompt_rows_counts_echo_requests_and_changes_nothing() -> None:
    stash = HiddenStash(ToyModel().layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32)
    assert stash.outs[0].shape == (4, H)
    prepare(stash, [decoding_req("a", 5, 0, 5, DOLA)], {"a"})
    assert stash.prompt_segments == {} and stash.prompt_unsupported == 1
    assert int(stash.actives[1]) == 1 and stash.rows[:1].tolist() == [4]


def test_stash_prompt_rows_in_a_compiled_graph_see_row_updates() -> None:
    model = ToyModel()
    stash = HiddenStash(model.layers, H, max_reqs=2, device=torch.device("cpu"), dtype=torch.float32, prompt_rows=8)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    x = torch.randn(8, H, generator=torch.Generator().manual_seed(3))
    for reqs, rows in (([decoding_req("a", 8, 0, 8, FUSED)], list(range(7))),
                       ([decoding_req("a", 9, 0, 5, FUSED), decoding_req("b", 3, 0, 3, FUSED)], [0, 1, 2, 3, 4, 5, 6])):
        prepare(stash, reqs, {"a", "b"})
        compiled(x)
        ref = toy_streams(x)
        n = len(reqs)
        for k in (0, 3):
            assert torch.allclose(stash.outs[k][n : n + len(rows)], ref[k][rows], atol=1e-6)


# ---------------------------------------------------------------------------------------- the maths
def batched_premature(hidden: dict[int, torch.Tensor], rows: slice | list[int], layers: tuple[int, ...], w: torch.Tensor,
                      scale: torch.Tensor) -> dict[int, torch.Tensor]:
    """The premature layers' logits at ``rows`` from ONE LM-head matmul over all (layer, row) pairs,
    as :func:`~steering.decoding.logits_processor.premature_logits` computes them: a CPU GEMM's rounding
    depends on the number of rows in the call (one call per layer differs in the last bit), and
    what is tested here is the contrast, not the GEMM."""
    states = torch.cat([norm_fn(scale)(hidden[k][rows]) for k in layers])
    return dict(zip(layers, (states @ w.t()).chunk(len(layers)), strict=True))


def expected_rows(final: torch.Tensor, premature: dict[int, torch.Tensor], cfg: ResolvedDecoding) -> torch.Tensor:
    """Per position: apply_contrast on that one row, then log_softmax (the DoLa scoring rule), or
    with ``echo_scores: "contrast"`` the contrast itself."""
    rows = [apply_contrast(final[t : t + 1], {k: v[t : t + 1] for k, v in premature.items()}, [cfg], [[]])[0]
            for t in range(final.shape[0])]
    return torch.stack(rows) if cfg.echo_scores == "contrast" else torch.stack([log_softmax(r) for r in rows])


@pytest.mark.parametrize("cfg", [DOLA, FIXED, FUSED, ResolvedDecoding("dola", (0, 1, 2, 3), alpha=0.01)])
@pytest.mark.parametrize("sparse", [False, True])
def test_contrast_positions_equal_apply_contrast_then_log_softmax(cfg: ResolvedDecoding, sparse: bool) -> None:
    _, hidden, w, scale = setup_step(6)
    final_hidden = torch.randn(4, H, generator=torch.Generator().manual_seed(9))
    lp = processor()
    attach(lp, [], hidden, w, scale, sparse=sparse)
    seg = PromptSegment(cfg, start=3, count=4, token_row=0, row=2)  # stash rows 2..5
    assert lp.norm is not None and lp.head is not None
    pos, got = prompt_contrast.contrast_positions(final_hidden, lp.stash, seg, lp.norm, lp.head,  # type: ignore[arg-type]
                                                  lp.token_head)
    assert pos.tolist() == [0, 1, 2, 3]
    premature = batched_premature(hidden, slice(2, 6), cfg.layers, w, scale)
    want = expected_rows(final_hidden @ w.t(), premature, cfg)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    if sparse and cfg in (FIXED, FUSED):  # the dropped log-normaliser cancels in the log_softmax
        assert torch.allclose(got[torch.isfinite(got)], want[torch.isfinite(want)], atol=1e-5)
    else:
        assert torch.equal(got, want)
    assert torch.allclose(got.exp().sum(-1), torch.ones(4), atol=1e-5)


def test_contrast_positions_gate_per_position_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_contrast, "BLOCK", 2)
    _, hidden, w, scale = setup_step(8)
    g = torch.Generator().manual_seed(4)
    final_hidden = torch.randn(5, H, generator=g) * torch.tensor([0.1, 20, 0.1, 20, 0.1])[:, None]  # flat / peaked
    ent = -(log_softmax(final_hidden @ w.t()).exp() * log_softmax(final_hidden @ w.t())).sum(-1)
    threshold = float((ent.max() + ent.min()) / 2)
    gated = ResolvedDecoding("dola", (1, 3), alpha=0.2, entropy_threshold=threshold)
    lp = processor()
    attach(lp, [], hidden, w, scale)
    assert lp.norm is not None and lp.head is not None
    pos, got = prompt_contrast.contrast_positions(final_hidden, FakeStash([], hidden), PromptSegment(gated, 0, 5, 0, 3),  # type: ignore[arg-type]
                                                  lp.norm, lp.head, None)
    keep = [t for t in range(5) if float(ent[t]) >= threshold]
    assert pos.tolist() == keep and 0 < len(keep) < 5
    want = []
    for b in range(0, 5, 2):  # one LM-head call per block, on the block's positions the gate keeps
        kept = [t for t in keep if b <= t < b + 2]
        if kept:
            final = (final_hidden[b : b + 2] @ w.t())[[t - b for t in kept]]
            premature = batched_premature(hidden, [3 + t for t in kept], gated.layers, w, scale)
            want.append(expected_rows(final, premature, gated))
    assert torch.equal(got, torch.cat(want))


# ---------------------------------------------------------------------------------------- the wrapper
class Model:
    def __init__(self, w: torch.Tensor) -> None:
        self.w = w

    def compute_logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.w.t()


def fake_model_runner(w: torch.Tensor, scale: torch.Tensor, stash: HiddenStash, reqs: dict[str, list[int]],
                      k: dict[str, int]) -> Any:
    proc = processor()
    proc.attach(stash, norm_fn(scale), lambda h: h @ w.t(), None)
    return SimpleNamespace(
        num_prompt_logprobs=dict(k),
        requests={rid: SimpleNamespace(prompt_token_ids=ids, num_computed_tokens=0, in_progress_prompt_logprobs_cpu=None)
                  for rid, ids in reqs.items()},
        device=torch.device("cpu"),
        input_batch=SimpleNamespace(req_id_to_index={rid: i for i, rid in enumerate(reqs)},
                                    logitsprocs=SimpleNamespace(all=[proc])),
        query_start_loc=SimpleNamespace(np=np.zeros(len(reqs) + 1, dtype=np.int32)),
        model=Model(w),
        model_config=SimpleNamespace(logprobs_mode="raw_logprobs"),
        sampler=Sampler,
        truthsteer_stash=stash,
        _sync_device=lambda: None,
    )


@pytest.mark.parametrize("cfg", [DOLA, dataclasses.replace(DOLA, alpha=0.0, echo_scores="contrast")],
                         ids=["logprobs", "raw-contrast"])
def test_wrapper_overwrites_each_chunk_with_the_contrast_and_leaves_plain_echo_alone(cfg: ResolvedDecoding) -> None:
    """Two steps of chunked prefill of an echo-DoLa request next to a plain echo request, through
    vLLM's own ``_get_prompt_logprobs_dict``: DoLa positions equal the per-position reference, the
    plain request equals the unwrapped method bit for bit. ``echo_scores: "contrast"`` with alpha 0
    writes the unnormalised contrast (DoLa's MC scoring): finite everywhere."""
    g = torch.Generator().manual_seed(11)
    V = 11
    w = torch.randn(V, H, generator=g)
    scale = torch.rand(H, generator=g) + 0.5
    model = ToyModel()
    stash = HiddenStash(model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32, prompt_rows=32)
    ids = {"dola": [1, 5, 2, 7, 3, 9, 4, 0, 6], "plain": [3, 3, 8, 1, 2]}
    runner = fake_model_runner(w, scale, stash, ids, {"dola": 2, "plain": 2})
    wrapped = prompt_contrast.wrap(VLLM_PROMPT_LOGPROBS)
    x = torch.randn(14, H, generator=g)
    streams = toy_streams(x)
    final_hidden = norm_fn(scale)(streams[-1])
    results: dict[str, Any] = {}
    # step 1: dola prompt positions 0..3 (a chunk of 4 tokens, x rows 0..3) next to the whole plain
    # prompt (x rows 4..8); step 2: dola's last 5 tokens (x rows 9..13), positions 4..7
    for step, sched in enumerate(([("dola", 4, 0), ("plain", 5, 4)], [("dola", 5, 9)])):
        reqs = [decoding_req(rid, len(ids[rid]), runner.requests[rid].num_computed_tokens, n,
                             cfg if rid == "dola" else None) for rid, n, _ in sched]
        runner.input_batch.req_id_to_index = {rid: i for i, (rid, _, _) in enumerate(sched)}
        runner.query_start_loc.np = np.concatenate([[0], np.cumsum([n for _, n, _ in sched])]).astype(np.int32)
        prepare(stash, reqs, {rid for rid, _, _ in sched})
        rows = np.concatenate([np.arange(s, s + n) for _, n, s in sched])
        model(x[rows])  # the pass fills the stash from this step's tokens
        scheduled = {rid: n for rid, n, _ in sched}
        if step == 0:  # vLLM's own method on the plain request alone, for comparison
            alone = fake_model_runner(w, scale, stash, {"plain": ids["plain"]}, {"plain": 2})
            alone.input_batch.req_id_to_index = {"plain": 1}
            alone.query_start_loc.np = runner.query_start_loc.np
            plain_out = VLLM_PROMPT_LOGPROBS(alone, final_hidden[rows], {"plain": 5})
        out = wrapped(runner, final_hidden[rows], scheduled)
        results.update(out)
        if step == 0:
            assert sorted(out) == ["plain"]
            assert all(a is b is None or torch.equal(a, b) for a, b in zip(out["plain"], plain_out["plain"], strict=True))
        for rid, n, _ in sched:
            runner.requests[rid].num_computed_tokens += n
    assert sorted(results) == ["dola", "plain"] and stash.prompt_positions == 8
    got = results["dola"]
    # reference: every dola position t (token rows 0..3 then 9..13 of x) over the whole prompt
    token_rows = [0, 1, 2, 3, 9, 10, 11, 12]
    premature = {k: norm_fn(scale)(streams[k][token_rows]) @ w.t() for k in range(L)}
    want = expected_rows(final_hidden[token_rows] @ w.t(), premature, cfg)
    targets = torch.tensor(ids["dola"][1:])
    assert torch.equal(got.logprobs[:, 0], want.gather(1, targets[:, None])[:, 0])
    top = torch.topk(want, 2, dim=-1)
    assert torch.equal(got.logprob_token_ids[:, 1:], top.indices.to(got.logprob_token_ids.dtype))
    assert torch.equal(got.logprobs[:, 1:], top.values)
    rank = (want >= want.gather(1, targets[:, None])).sum(-1)
    assert torch.equal(got.selected_token_ranks, rank.to(got.selected_token_ranks.dtype))
    if cfg.alpha > 0:
        assert bool(torch.isinf(got.logprobs).any())  # some prompt tokens fall outside the plausible set
    else:
        assert bool(torch.isfinite(got.logprobs).all())
        assert not torch.allclose(want.exp().sum(-1), torch.ones(len(token_rows)))  # not a distribution
    assert not math.isnan(float(got.logprobs[torch.isfinite(got.logprobs)].sum()))


def test_offline_echo_scoring_checks_name_the_field() -> None:
    from steering.errors import SpecError
    from steering.request import check_prompt_contrast

    check_prompt_contrast(DOLA, True)
    with pytest.raises(SpecError) as e:
        check_prompt_contrast(ResolvedDecoding("dola", (1,), repetition_penalty=1.2), True, "decoding[2]")
    assert e.value.param == "decoding[2].repetition_penalty"
    with pytest.raises(SpecError) as e:
        check_prompt_contrast(DOLA, False)
    assert e.value.param == "decoding" and "prompt_contrast" in str(e.value)
