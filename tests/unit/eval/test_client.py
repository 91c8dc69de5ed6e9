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


def test_ab_generated_counts_the_written_letter_among_a_or_b_answers() -> None:
    import asyncio
    from typing import Any

    from eval.configs import Config
    from eval.data import ABItem
    from eval.tasks import ab_generated

    class Tok:
        def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
            return f"<user>{messages[0]['content']}<assistant>"

    class FakeApi:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int, dict[str, Any]]] = []

        async def generate(self, prompt: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
            self.seen.append((prompt, max_tokens, extra))
            q = prompt[6:8]
            out: dict[str, Any] = {"text": {"q1": "A", "q2": "B)", "q3": " x", "q4": "A"}[q]}
            if extra:  # the server's per-choice counts: only q2's letter was contrasted
                out["interventions"] = {"steered_tokens": 0, "contrasted_tokens": int(q == "q2")}
            return out

    items = [ABItem("q1", "A", "B"), ABItem("q2", "A", "B"), ABItem("q3", "B", "A"), ABItem("q4", "B", "A")]
    api = FakeApi()
    cfg = Config("dola", {"decoding": {"method": "dola"}})
    got = asyncio.run(ab_generated(api, items, cfg, Tok(), "t"))  # type: ignore[arg-type]
    # q1 sycophantic, q2 not, q3 unparsable, q4 not: 1 of 3 answered
    assert got == {"frac_matching": 1 / 3, "answered": 3 / 4, "n": 4, "steered": 0.0, "contrasted": 1 / 4}
    assert sorted(api.seen)[0] == ("<user>q1<assistant>(", 1, {"decoding": {"method": "dola"}})
    # no interventions reported (no steering or decoding): no such columns
    plain = asyncio.run(ab_generated(api, items, Config("none", {}), Tok(), "t"))  # type: ignore[arg-type]
    assert plain == {"frac_matching": 1 / 3, "answered": 3 / 4, "n": 4}
