"""One fixed workload through the real server and the ``openai`` client, and its comparison.

Used to show that two engine configurations of the same model give the same results (the ops'
all-slots mode vs the CPU default; tensor parallelism vs one rank): every steering op and
position mode, probe scores, a probe-gated steering op, DoLa, probe-gated contrast, and
``/v1/probes/score``. Requests run one at a time, one prompt each, so every configuration sees the
same batches (two prompts of one call may be scheduled in one step or in two, and a matrix product
over more rows may round differently in the last bit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

MODEL = "parity"
PROMPT = "Question: is the city of Lyon in France? Answer:"
PROBES = ["truth", "sycophancy"]
CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("add", {"steering": [{"direction": "truth", "strength": 6.0}]}),
    ("ablate", {"steering": [{"direction": "truth", "op": "ablate", "layers": [10, 11, 12, 13, 14, 15]}]}),
    ("clamp", {"steering": [{"direction": "sycophancy", "op": "clamp", "layers": [10, 11, 12], "target": 3.0}]}),
    ("positions", {"steering": [{"direction": "truth", "strength": 8.0, "positions": "prompt", "layers": [5, 6]},
                                {"direction": "sycophancy", "strength": -8.0, "positions": "generated"}]}),
    ("gate", {"steering": [{"direction": "truth", "strength": 6.0,
                            "gate": {"probe": "truth", "below": 0.6, "window": 2, "hold": 1}}]}),
    ("dola", {"decoding": {"method": "dola", "premature_layers": "high"}}),
    ("gated-contrast", {"decoding": {"method": "contrast", "premature_layers": [12], "alpha": 0.1,
                                     "gate": {"probe": "truth", "below": 0.6}}}),
]


@dataclass(frozen=True)
class Result:
    name: str
    tokens: list[str]
    logprobs: list[float]
    probes: dict[str, list[float]]
    interventions: dict[str, Any] | None


def run_workload(base: str, api_key: str, max_tokens: int = 8) -> list[Result]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=600)
    out = []
    for name, extra in CASES:
        r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=max_tokens, temperature=0, logprobs=3,
                                      extra_body={**extra, "probes": PROBES})
        c = r.choices[0]
        assert c.logprobs is not None
        probes = {k: list(v["tokens"]) for k, v in c.model_extra["probe_scores"].items()}
        out.append(Result(name, list(c.logprobs.tokens), [float(x) for x in c.logprobs.token_logprobs], probes,
                          c.model_extra.get("interventions")))
    texts = [PROMPT, "Paris is the capital of Japan."]
    for reduce in ("last", "mean"):
        scores: dict[str, list[float]] = {}
        for i, text in enumerate(texts):  # one text per call: two in one call may share a step or not
            r2 = httpx.post(f"{base}/v1/probes/score", headers={"Authorization": f"Bearer {api_key}"}, timeout=600,
                            json={"model": MODEL, "input": [text], "probes": PROBES, "reduce": reduce})
            r2.raise_for_status()
            scores |= {f"{k}[{i}]": [float(v)] for d in r2.json()["data"] for k, v in d["scores"].items()}
        out.append(Result(f"score-{reduce}", [], [], scores, None))
    return out


def max_difference(got: list[Result], want: list[Result]) -> tuple[float, str]:
    """The largest logprob or probe-score difference and the case it is in; raises AssertionError,
    naming the case, when tokens, interventions or the shape of the results differ."""
    worst, where = 0.0, ""
    assert [r.name for r in got] == [r.name for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.tokens == b.tokens, (a.name, a.tokens, b.tokens)
        assert a.interventions == b.interventions, a.name
        assert a.probes.keys() == b.probes.keys() and all(len(a.probes[k]) == len(b.probes[k]) for k in a.probes)
        pairs = [("logprob", x, y) for x, y in zip(a.logprobs, b.logprobs, strict=True)]
        pairs += [(k, x, y) for k in a.probes for x, y in zip(a.probes[k], b.probes[k], strict=True)]
        for what, x, y in pairs:
            if abs(x - y) > worst:
                worst, where = abs(x - y), f"{a.name}: {what}"
    return worst, where
