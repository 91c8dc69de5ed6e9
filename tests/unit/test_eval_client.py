import pytest

from eval.client import continuation


def _lp(tokens: list[str], lps: list[float | None]) -> dict[str, object]:
    offs, pos = [], 0
    for t in tokens:
        offs.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "text_offset": offs}


def test_continuation_takes_prompt_tokens_from_the_boundary_and_drops_the_generated_one() -> None:
    # prompt "A: Yes" = "A", ":", " Yes"; the 4th entry is the generated token
    got = continuation(_lp(["A", ":", " Yes", "!"], [None, -1.0, -2.5, -9.0]), start=len("A:"))
    assert got.logprobs == [-2.5]
    assert got.total == -2.5


def test_empty_context_skips_the_unscored_first_token() -> None:
    got = continuation(_lp(["Hi", " there", "."], [None, -0.5, -3.0]), start=0)
    assert got.logprobs == [-0.5]


def test_no_continuation_tokens_is_an_error() -> None:
    with pytest.raises(ValueError):
        continuation(_lp(["A", "x"], [None, -1.0]), start=1)
