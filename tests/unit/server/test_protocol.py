"""server/protocol.py: what each request model says about itself (prompts, token budget, echo
scoring), so that serving never branches on chat vs completion."""

from __future__ import annotations

import pytest

from server.protocol import ChatCompletionRequest, CompletionRequest, prompt_items
from tests.support.fakes import FakeTokenizer

M = "m"


@pytest.mark.parametrize(
    ("prompt", "items"),
    [
        ("abc", ["abc"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_prompt_items_cover_the_four_openai_prompt_forms(prompt: object, items: list[object]) -> None:
    assert prompt_items(prompt) == items  # type: ignore[arg-type]
    req = CompletionRequest(model=M, prompt=prompt)  # type: ignore[arg-type]
    assert req.n_prompts == len(items)
    assert req.prompt_inputs(FakeTokenizer()) == items
    assert req.prompt_param == "prompt"


def test_chat_prompt_is_the_templated_conversation_as_ids_without_added_special_tokens() -> None:
    req = ChatCompletionRequest(model=M, messages=[{"role": "developer", "content": "be brief"},  # type: ignore[list-item]
                                                   {"role": "user", "content": "hi"}])
    tok = FakeTokenizer()
    expected = tok("<system>be brief<user>hi<assistant>")["input_ids"]
    assert req.prompt_inputs(tok) == [expected]
    assert req.n_prompts == 1
    assert req.prompt_param == "messages"


def test_token_budget_names_the_field_that_set_it() -> None:
    assert CompletionRequest(model=M, prompt="x").token_budget() == ("max_tokens", None)
    assert CompletionRequest(model=M, prompt="x", max_tokens=7).token_budget() == ("max_tokens", 7)
    msgs = [{"role": "user", "content": "hi"}]
    assert ChatCompletionRequest(model=M, messages=msgs).token_budget() == ("max_tokens", None)  # type: ignore[arg-type]
    assert ChatCompletionRequest(model=M, messages=msgs, max_tokens=5).token_budget() == ("max_tokens", 5)  # type: ignore[arg-type]
    both = ChatCompletionRequest(model=M, messages=msgs, max_tokens=5, max_completion_tokens=9)  # type: ignore[arg-type]
    assert both.token_budget() == ("max_completion_tokens", 9)


def test_echo_scoring_only_for_completions_with_echo_and_logprobs() -> None:
    assert CompletionRequest(model=M, prompt="x", echo=True, logprobs=0).echo_scoring
    assert not CompletionRequest(model=M, prompt="x", echo=True).echo_scoring
    assert not CompletionRequest(model=M, prompt="x", logprobs=1).echo_scoring
    assert not ChatCompletionRequest(model=M, messages=[{"role": "user", "content": "x"}],  # type: ignore[list-item]
                                     logprobs=True).echo_scoring
