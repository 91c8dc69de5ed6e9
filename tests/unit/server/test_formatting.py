"""OpenAI logprobs objects (``server/formatting.py``)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

from tests.support.fakes import FakeTokenizer


def test_chat_top_logprobs_are_the_top_k_whether_or_not_the_sampled_token_is_among_them() -> None:
    from server.formatting import chat_logprobs

    lp = lambda logprob, rank: SimpleNamespace(logprob=logprob, rank=rank)  # noqa: E731
    in_top = {65: lp(-0.1, 1), 66: lp(-2.0, 2)}  # sampled 'A' is rank 1
    below = {67: lp(-3.0, 5), 65: lp(-0.1, 1), 66: lp(-2.0, 2)}  # sampled 'C' ranks 5th
    out = chat_logprobs(FakeTokenizer(), [65, 67], [in_top, below], top_k=2)
    assert out is not None
    first, second = out["content"]
    assert first["token"] == "A" and [t["token"] for t in first["top_logprobs"]] == ["A", "B"]
    assert second["token"] == "C" and second["logprob"] == -3.0
    assert [t["token"] for t in second["top_logprobs"]] == ["A", "B"]
    assert chat_logprobs(FakeTokenizer(), [65], [in_top], top_k=0)["content"][0]["top_logprobs"] == []  # type: ignore[index]
    assert chat_logprobs(FakeTokenizer(), [65], None, top_k=2) is None

def test_minus_infinity_logprobs_are_written_as_minus_9999() -> None:
    from server.formatting import completion_logprobs

    lp = [None, {5: SimpleNamespace(logprob=-math.inf, rank=9), 6: SimpleNamespace(logprob=0.0, rank=1)}]
    out = completion_logprobs(FakeTokenizer(), [4, 5], lp)
    assert out is not None and out["token_logprobs"] == [None, -9999.0]
    assert out["top_logprobs"][1] == {chr(5): -9999.0, chr(6): 0.0}
    json.dumps(out, allow_nan=False)
