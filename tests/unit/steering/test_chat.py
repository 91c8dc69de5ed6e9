"""The one chat-turn renderer: what bundle frames, the CLI and the datasets all call."""

from __future__ import annotations

import pytest

from steering.bundle import ProbeFrame
from steering.chat import user_turn
from tests.support.fakes import FakeTokenizer


class NoTemplate:
    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        raise ValueError("Cannot use chat template functions because tokenizer.chat_template is not set")


def test_user_turn_is_the_message_as_the_users_turn_up_to_the_assistants_opening() -> None:
    assert user_turn("Is it?", FakeTokenizer()) == "<user>Is it?<assistant>"


def test_a_chat_frame_renders_exactly_what_user_turn_renders_plus_its_answer() -> None:
    frame = ProbeFrame(name="f", kind="chat", template="Q: {statement}", answer=" It is")
    assert frame.apply(" x ", FakeTokenizer()) == user_turn("Q: x", FakeTokenizer()) + " It is"


def test_a_tokenizer_without_a_chat_template_raises_as_transformers_does() -> None:
    with pytest.raises(ValueError, match="chat_template"):
        user_turn("Is it?", NoTemplate())
