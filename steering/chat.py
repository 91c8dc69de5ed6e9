"""The model's chat template, applied in one place: a message as the user's turn.

Everything that wraps text in a chat turn (bundle frames, the offline ``truthsteer generate
--chat``, probe datasets and the evaluation) calls :func:`user_turn`, so the text a probe was
trained on and the text it is served on are rendered identically.
"""

from __future__ import annotations


def user_turn(message: str, tokenizer: object) -> str:
    """``message`` as the user's turn in the model's chat template, ending at the assistant's
    opening (the generation prompt). Raises ``AttributeError`` (no tokenizer) or ``ValueError``
    (a tokenizer without a chat template) as transformers does."""
    text: str = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )
    return text
