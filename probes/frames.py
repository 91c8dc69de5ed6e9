"""Reading frames: the text a probe reads a statement in, and so the position it reads it at.

A probe is always read at the *last token* of the text it is given. The frame
(:class:`steering.bundle.ProbeFrame`, stored in the bundle as ``probe.frame``) decides what that
text is:

* ``raw`` -- the statement itself; the probe reads its last token (the full stop).
* ``chat`` -- the model's chat template around one user turn that asks whether the statement is
  true (:data:`CHAT_QUESTION`), with the assistant's opening: the probe reads the last token of the
  assistant header, where the model is about to give its verdict.
* ``verdict`` -- the ``chat`` frame with the assistant's reply begun, "The statement is": the
  probe reads the token after which the model writes its verdict ("true" / "false").
* ``repe`` -- RepE's plain-text prompt ("Consider the amount of truthfulness in the following
  statement: ... The amount of truthfulness in the statement is"), read at its last token.

Invariant: training (:mod:`probes.lodo_cli`) and serving (``/v1/probes/score``) frame a statement
with the same ``ProbeFrame.apply``, so a probe is never read at a position it was not trained at.
Scores of *generated* tokens keep the server's convention (the position that sampled the token),
whatever the frame.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from probes.datasets import Dataset
from steering.bundle import ProbeFrame

CHAT_QUESTION = "Is the following statement true or false?\n\n{statement}"
VERDICT_ANSWER = "The statement is"
REPE_TEMPLATE = (
    "Consider the amount of truthfulness in the following statement:\n{statement}\n"
    "The amount of truthfulness in the statement is"
)

FRAMES: dict[str, ProbeFrame] = {
    "raw": ProbeFrame(name="raw", kind="raw"),
    "chat": ProbeFrame(name="chat", kind="chat", template=CHAT_QUESTION),
    "verdict": ProbeFrame(name="verdict", kind="chat", template=CHAT_QUESTION, answer=VERDICT_ANSWER),
    "repe": ProbeFrame(name="repe", kind="text", template=REPE_TEMPLATE),
}


def get_frame(name: str) -> ProbeFrame:
    try:
        return FRAMES[name]
    except KeyError:
        raise ValueError(f"unknown frame {name!r} (have {', '.join(FRAMES)})") from None


def framed(data: Dataset, frame: ProbeFrame | None, tokenizer: Any) -> Dataset:
    """``data`` with every statement put in ``frame`` (itself when there is none, or it is raw), so
    an offline evaluation reads a bundle's probe where it was trained and where the server reads it."""
    if frame is None or frame.kind == "raw":
        return data
    examples = [dataclasses.replace(e, text=frame.apply(e.text, tokenizer)) for e in data.examples]
    return dataclasses.replace(data, name=f"{data.name} ({frame.name} frame)", examples=examples)
