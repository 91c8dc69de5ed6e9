from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from steering.decoding.contrastive import (
    apply_contrast,
    contrast_logits,
    entropy,
    entropy_gate,
    fused_contrast,
    jsd,
    jsd_select,
    layers_needed,
    log_softmax,
    plausibility_mask,
    repetition_penalty,
    stack_blocks,
)
from steering.decoding.spec import ResolvedDecoding
from tests.support.hf_dola_455 import _dola_select_contrast

INF = math.inf


def logp(*probs: float) -> torch.Tensor:
    """Log of a hand-made distribution (exact zeros become -inf)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def test_jsd_hand_computed() -> None:
    final = torch.stack([logp(0.5, 0.5), logp(1.0, 0.0)])
    prem = torch.stack(
        [
            torch.stack([logp(1.0, 0.0), logp(0.0, 1.0)]),  # 0.75 ln(4/3), disjoint: ln 2
            torch.stack([logp(0.5, 0.5), logp(1.0, 0.0)]),  # identical: 0
        ]
    )
    got = jsd(final, prem)
    want = torch.tensor([[0.75 * math.log(4 / 3), math.log(2)], [0.0, 0.0]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def _jsd_by_kl(final_logp: torch.Tensor, premature_logp: torch.Tensor) -> torch.Tensor:
    """The definition, in float64: KL(P || M) / 2 + KL(Q || M) / 2 (0 log 0 = 0)."""
    p, q = final_logp.double().exp().expand_as(premature_logp), premature_logp.double().exp()
    m = (p + q) / 2
    kl = lambda a: torch.where(a > 0, a * (a.log() - m.log()), torch.zeros((), dtype=a.dtype)).sum(-1)  # noqa: E731
    return (kl(p) + kl(q)) / 2


def test_jsd_equals_the_kl_definition_on_large_vocabularies() -> None:
    """Entropy form vs the definition, on a 49152-token vocabulary with masked (-inf) final-layer
    tokens and premature tokens that underflow to p = 0."""
    g = torch.Generator().manual_seed(3)
    final = log_softmax(torch.randn(6, 49152, generator=g) * 4)
    final[:, :100] = -INF
    prem = log_softmax(torch.randn(4, 6, 49152, generator=g) * 4)
    prem[:, :, 50:80] = -200.0
    got = jsd(final, prem)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), _jsd_by_kl(final, prem), rtol=0, atol=2e-6)
    assert torch.equal(jsd_select(final, prem), _jsd_by_kl(final, prem).argmax(0))


def test_jsd_select_picks_the_farthest_layer_per_row() -> None:
    final = torch.stack([logp(0.5, 0.3, 0.2), logp(0.1, 0.1, 0.8)])
    prem = torch.stack(
        [
            torch.stack([logp(0.5, 0.3, 0.2), logp(0.8, 0.1, 0.1)]),  # row 1: the farthest
            torch.stack([logp(0.2, 0.3, 0.5), logp(0.1, 0.2, 0.7)]),
            torch.stack([logp(0.05, 0.05, 0.9), logp(0.1, 0.1, 0.8)]),  # row 0: the farthest
        ]
    )
    assert jsd_select(final, prem).tolist() == [2, 0]
    # Ties go to the first candidate.
    same = torch.stack([final, final])
    assert jsd_select(final, same).tolist() == [0, 0]


def test_jsd_differs_from_dola_code_divergence_where_documented() -> None:
    """The paper's JSD picks Q1 (0.1953 > 0.1777 nats); the DoLa / HF code's
    (KL(M||P) + KL(M||Q)) / 2 (0.2285 < 0.2920) picks Q2. truthsteer follows the paper."""
    final = logp(0.5, 0.3, 0.2)[None]
    q1, q2 = logp(0.1, 0.1, 0.8), logp(0.98, 0.01, 0.01)
    prem = torch.stack([q1[None], q2[None]])
    torch.testing.assert_close(jsd(final, prem)[:, 0], torch.tensor([0.19531, 0.17766]), rtol=0, atol=1e-5)
    assert jsd_select(final, prem).tolist() == [0]
    hf = _dola_select_contrast([1, 2], {1: q1[None].clone(), 2: q2[None].clone()}, final.clone())
    mask = plausibility_mask(final, 0.1)
    assert torch.equal(hf, contrast_logits(final, q2[None], mask))


def test_plausibility_mask_keeps_exactly_the_plausible_tokens() -> None:
    rows = torch.stack([logp(0.5, 0.3, 0.04, 0.1, 0.06), logp(0.4, 0.4, 0.2, 0.0, 0.0)])
    assert plausibility_mask(rows, 0.1).tolist() == [
        [True, True, False, True, True],
        [True, True, True, False, False],
    ]
    assert plausibility_mask(rows, 1.0).tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],  # ties at the top are both kept
    ]
    assert plausibility_mask(rows, 0.5).tolist() == [
        [True, True, False, False, False],
        [True, True, True, False, False],
    ]


def test_alpha_zero_switches_the_constraint_off() -> None:
    """DoLa's own TruthfulQA-MC setting (``relative_top 0.0``): every token with p > 0 stays, and the
    contrast is log p_final - log p_premature on all of them."""
    rows = torch.stack([logp(0.5, 0.3, 0.04, 0.1, 0.06), logp(0.4, 0.4, 0.2, 0.0, 0.0)])
    assert plausibility_mask(rows, 0.0).tolist() == [[True] * 5, [True, True, True, False, False]]
    final, prem = _batch(3, 50, [2, 8], seed=5)
    out = apply_contrast(final, prem, [ResolvedDecoding("dola", (2,), alpha=0.0)] * 3, [[]] * 3)
    assert torch.equal(out, log_softmax(final) - log_softmax(prem[2]))
    assert bool(torch.isfinite(out).all())


def test_contrast_values_equal_hand_computed_numbers() -> None:
    final = logp(0.5, 0.3, 0.04, 0.16)[None]
    prem = logp(0.25, 0.5, 0.125, 0.125)[None]
    got = contrast_logits(final, prem, plausibility_mask(final, 0.1))
    want = torch.tensor([[math.log(2), math.log(0.6), -INF, math.log(1.28)]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_fused_contrast_hand_computed_and_single_layer_equals_fixed_contrast() -> None:
    final = logp(0.5, 0.3, 0.04, 0.16)[None]
    q1 = logp(0.25, 0.5, 0.125, 0.125)[None]
    q2 = logp(0.5, 0.25, 0.125, 0.125)[None]
    mask = plausibility_mask(final, 0.1)
    got = fused_contrast(final, torch.stack([q1, q2]), torch.tensor([0.25, 0.75]), mask)
    want = torch.tensor(
        [[0.25 * math.log(2), 0.25 * math.log(0.6) + 0.75 * math.log(1.2), -INF, math.log(1.28)]]
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    single = fused_contrast(final, q1[None], torch.tensor([1.0]), mask)
    assert torch.equal(single, contrast_logits(final, q1, mask))


def test_entropy_hand_computed() -> None:
    rows = torch.stack([logp(0.25, 0.25, 0.25, 0.25), logp(1.0, 0.0, 0.0, 0.0), logp(0.5, 0.5, 0.0, 0.0)])
    got = entropy(rows)
    assert got[1].item() == 0.0
    torch.testing.assert_close(got, torch.tensor([math.log(4), 0.0, math.log(2)]), rtol=0, atol=1e-6)
    assert entropy_gate(rows, math.log(2)).tolist() == [True, False, True]
    assert entropy_gate(rows, None).tolist() == [True, True, True]


def test_repetition_penalty_matches_hf() -> None:
    scores = torch.tensor([[2.0, -1.0, 0.5, -INF, 3.0], [1.0, 1.0, -4.0, 0.0, -INF]])
    history = [[0, 1, 1, 3], [2, 4, 7]]  # 7 is outside the vocabulary: ignored
    got = repetition_penalty(scores, history, 2.0)
    assert got.tolist() == [[1.0, -2.0, 0.5, -INF, 3.0], [1.0, 1.0, -8.0, 0.0, -INF]]
    hf = RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[0, 1, 1, 3], [2, 4, 4, 4]]), scores.clone())
    assert torch.equal(got, hf)
    assert torch.equal(repetition_penalty(scores, history, 1.0), scores)


def _batch(rows: int, vocab: int, layers: list[int], seed: int = 0) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    final = 3 * torch.randn(rows, vocab, generator=g)
    prem = {k: final + (1 + k) * torch.randn(rows, vocab, generator=g) for k in layers}
    return final, prem


DOLA = ResolvedDecoding(method="dola", layers=(2, 4, 6))
FIXED = ResolvedDecoding(method="contrast", layers=(4,), weights=(1.0,), alpha=0.2)
FUSED = ResolvedDecoding(method="contrast", layers=(2, 6), weights=(0.25, 0.75), repetition_penalty=1.3)
GATED = ResolvedDecoding(method="dola", layers=(2, 6), entropy_threshold=2.0)
NONE = ResolvedDecoding(method="none")


def test_apply_contrast_mixed_batch_rows_are_isolated() -> None:
    configs: list[ResolvedDecoding | None] = [DOLA, None, FIXED, FUSED, NONE, DOLA, FUSED]
    history = [[1, 2], [], [3], [5, 5, 9], [0], [7], [11, 1]]
    assert layers_needed(configs) == [2, 4, 6]
    final, prem = _batch(len(configs), 50, [2, 4, 6])
    out = apply_contrast(final, prem, configs, history)
    for r in (1, 4):  # untouched rows: bit for bit
        assert torch.equal(out[r], final[r])
    # Each row equals the same row decoded alone.
    for r, cfg in enumerate(configs):
        alone = apply_contrast(final[r : r + 1], {k: v[r : r + 1] for k, v in prem.items()}, [cfg], [history[r]])
        assert torch.equal(out[r], alone[0]), r
    # And the composition by hand.
    f = log_softmax(final)
    lp = {k: log_softmax(v) for k, v in prem.items()}
    torch.testing.assert_close(out[2], torch.where(plausibility_mask(f, 0.2), f - lp[4], -INF)[2])
    fused = torch.where(plausibility_mask(f, 0.1), f - 0.25 * lp[2] - 0.75 * lp[6], -INF)[3]
    fused = repetition_penalty(fused[None], [history[3]], 1.3)[0]
    torch.testing.assert_close(out[3], fused)
    for r in (0, 5):
        j = jsd(f[r : r + 1], torch.stack([lp[k][r : r + 1] for k in (2, 4, 6)]))[:, 0]
        k = (2, 4, 6)[int(j.argmax())]
        torch.testing.assert_close(out[r], torch.where(plausibility_mask(f, 0.1), f - lp[k], -INF)[r])


def test_dola_selects_per_row_not_per_batch() -> None:
    final = torch.stack([logp(0.5, 0.3, 0.2), logp(0.1, 0.1, 0.8)])
    far0, far1 = logp(0.05, 0.05, 0.9), logp(0.8, 0.1, 0.1)
    prem = {1: torch.stack([logp(0.45, 0.35, 0.2), far1]), 2: torch.stack([far0, logp(0.1, 0.15, 0.75)])}
    out = apply_contrast(final, prem, [ResolvedDecoding("dola", (1, 2), alpha=0.01)] * 2, [[], []])
    f = log_softmax(final)
    torch.testing.assert_close(out[0], f[0] - log_softmax(far0), rtol=0, atol=1e-6)  # layer 2
    torch.testing.assert_close(out[1], f[1] - log_softmax(far1), rtol=0, atol=1e-6)  # layer 1


def test_entropy_gate_leaves_confident_rows_bitwise_untouched() -> None:
    final, prem = _batch(4, 1000, [2, 6], seed=1)
    final[0, 17] += 40.0  # confident: entropy ~ 0
    final[2, 3] += 40.0
    final[1] /= 10.0  # uncertain: entropy ~ ln(1000)
    final[3] /= 10.0
    ent = entropy(log_softmax(final))
    assert ent[0] < 1e-6 and ent[2] < 1e-6 and ent[1] > 6.0 and ent[3] > 6.0
    out = apply_contrast(final, prem, [GATED] * 4, [[]] * 4)
    assert torch.equal(out[0], final[0]) and torch.equal(out[2], final[2])
    assert not torch.equal(out[1], final[1]) and not torch.equal(out[3], final[3])
    ungated = apply_contrast(final, prem, [ResolvedDecoding("dola", (2, 6))] * 4, [[]] * 4)
    assert torch.equal(out[1], ungated[1]) and torch.equal(out[3], ungated[3])
    assert not torch.equal(ungated[0], final[0])


@pytest.mark.parametrize("seed", range(8))
def test_matches_hf_455_dola_step(seed: int) -> None:
    """One row, against HF transformers 4.55's own DoLa step (see hf_dola_455)."""
    final, prem = _batch(1, 200, [2, 8], seed=seed)
    for layers in ([2], [8], [2, 8]):
        hf = _dola_select_contrast(layers, {k: prem[k].clone() for k in layers}, final.clone())
        ours = apply_contrast(final, prem, [ResolvedDecoding("dola", tuple(layers))], [[]])
        assert torch.equal(ours, hf), layers


def test_stack_blocks_is_a_view_of_consecutive_blocks_and_a_copy_otherwise() -> None:
    buf = torch.randn(3 * 4, 7)
    blocks = [buf[4 * i : 4 * (i + 1)] for i in range(3)]
    view = stack_blocks(blocks)
    assert torch.equal(view, torch.stack(blocks)) and view.shape == (3, 4, 7)
    assert view.data_ptr() == buf.data_ptr()  # no copy
    for others in (blocks[::-1], [blocks[0], blocks[2]], [blocks[0], blocks[1].clone()], [b[:, :5] for b in blocks]):
        out = stack_blocks(others)
        assert torch.equal(out, torch.stack(others)) and out.data_ptr() != buf.data_ptr()


def test_dola_on_views_of_one_head_call_equals_dola_on_separate_tensors() -> None:
    """The vLLM path hands apply_contrast views of one [layers * rows, V] head output; the result
    is bitwise that of separate tensors, with and without a gate dropping rows, and the views are
    left untouched."""
    final, prem = _batch(5, 300, [2, 4, 6], seed=3)
    buf = torch.cat([prem[k] for k in (2, 4, 6)])
    before = buf.clone()
    views = {k: buf[5 * i : 5 * (i + 1)] for i, k in enumerate((2, 4, 6))}
    final[1, 0] += 60.0  # confident: the gate holds it back
    gated = ResolvedDecoding("dola", (2, 4, 6), entropy_threshold=0.5)
    assert int(entropy_gate(log_softmax(final), 0.5).sum()) == 4
    for cfg in (ResolvedDecoding("dola", (2, 4, 6), alpha=0.05), gated, GATED):
        assert torch.equal(apply_contrast(final, views, [cfg] * 5, [[]] * 5),
                           apply_contrast(final, prem, [cfg] * 5, [[]] * 5))
    assert torch.equal(buf, before)


def test_apply_contrast_checks_row_counts() -> None:
    final, prem = _batch(2, 10, [2])
    with pytest.raises(ValueError, match="2 rows but 1 configs"):
        apply_contrast(final, prem, [NONE], [[], []])
