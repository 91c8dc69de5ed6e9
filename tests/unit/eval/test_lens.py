"""eval.lens: the logit lens of the A/B letter, on a tiny random Llama and toy margins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval.lens import depth_table, first_difference, lens_logprobs, margins
from probes import biased_belief as bb
from probes.extract import load_hf
from tests.support.tiny import make_tiny_llama


def test_first_difference_is_where_two_continuations_part() -> None:
    assert first_difference([5, 6, 7, 8], [5, 6, 9]) == ([5, 6], 7, 9)
    assert first_difference([1], [2]) == ([], 1, 2)
    with pytest.raises(ValueError, match="prefix"):
        first_difference([5, 6], [5, 6, 7])


def test_the_lens_has_one_row_per_depth_and_its_last_row_is_the_models_own_output(tmp_path: Path) -> None:
    model, _ = load_hf(make_tiny_llama(tmp_path))
    prefix, tokens = [3, 4, 5, 6], [7, 8, 2]
    lp = lens_logprobs(model, prefix, tokens)
    assert lp.shape == (model.config.num_hidden_layers + 1, 3)
    with torch.inference_mode():
        own = torch.log_softmax(model(torch.tensor([prefix])).logits[0, -1].float(), -1)[tokens]
    assert torch.equal(lp[-1], own)
    with torch.inference_mode():  # depth 1: decoder layer 0's output through the final norm and head
        h = model(torch.tensor([prefix]), output_hidden_states=True).hidden_states[1][0, -1]
        want = torch.log_softmax(model.lm_head(model.model.norm(h)).float(), -1)[tokens]
    assert torch.allclose(lp[1], want, atol=1e-6) and not torch.allclose(lp[1], lp[-1])


def test_depth_table_counts_ties_as_wrong_and_pairs_neutral_with_biased_by_order() -> None:
    # 3 questions x (neutral, biased) + 3 agree prompts; 2 depths
    margin = torch.tensor([[1.0, 1.0], [1.0, -1.0],     # q1: right neutral; biased right at depth 0 only
                           [1.0, 1.0], [0.0, -2.0],     # q2: biased tie (wrong) at depth 0
                           [-1.0, 1.0], [-1.0, 1.0],    # q3: wrong neutral at depth 0
                           [1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    kinds = ["neutral", "biased"] * 3 + ["agree"] * 3
    rows = depth_table(margin, kinds)
    assert [r["acc_neutral"] for r in rows] == [2 / 3, 1.0]
    assert [r["acc_biased"] for r in rows] == [1 / 3, 1 / 3]
    assert [r["acc_agree"] for r in rows] == [1.0, 2 / 3]
    assert [r["drop"] for r in rows] == pytest.approx([1 / 3, 2 / 3])
    # depth 0, neutral minus biased per question: 0, 1, 0 -> mean 1/3, variance 1/3 (n - 1), SE 1/3
    assert rows[0]["drop_se"] == pytest.approx(1 / 3)


class LetterTok:
    """Chat turn as in tests.support.fakes; every text is 4 fixed tokens, then one per final letter."""

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return "<user>" + messages[0]["content"] + "<assistant>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [3, 4, 5, 6] + ({"A": [7], "B": [8]}[text[-1]] if text.endswith(("(A", "(B")) else [])}


def test_margins_read_the_correct_minus_the_wrong_letter_where_the_two_answers_part(tmp_path: Path) -> None:
    model, _ = load_hf(make_tiny_llama(tmp_path))
    a, b = (bb.Prompt("q1", "geography", "ab", "x", "Peru", "Chile", None, letter) for letter in ("A", "B"))
    got = margins(model, LetterTok(), [a, b])
    lp = lens_logprobs(model, [3, 4, 5, 6], [7, 8])
    assert torch.equal(got[0], lp[:, 0] - lp[:, 1]) and torch.equal(got[1], lp[:, 1] - lp[:, 0])
