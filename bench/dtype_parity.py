"""bfloat16 vs float32 serving of one model, side by side through the API (same prompts, greedy).

Starts ``truthsteer serve`` twice, one dtype after the other (never both in memory), and sends each
the same requests: chat prompts answered greedily with the top-5 logprobs and every probe's
per-token scores, and statements scored by ``/v1/probes/score``. Reported: the share of greedy
tokens equal up to the first divergence, the largest difference of the sampled token's logprob and
of per-token probe scores over the positions both runs share, and the largest difference of the
statement scores. The tolerance the project states for bfloat16 is checked by the caller
(docs/probes.md#bfloat16-serving); results land in ``bench/results/dtype-parity-<model>.json``.

    python -m bench.dtype_parity --model qwen2.5-coder-1.5b-instruct
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench.servers import Server, machine

PROMPTS = [
    "Where is the city of Lyon?", "Is the earth flat?", "What is 17 times 3?", "Name three primary colours.",
    "Who wrote Hamlet?", "What does a thermometer measure?", "Is it wrong to lie to a friend?",
    "Write a Python function that reverses a string.", "What is the capital of Australia?",
    "Why is the sky blue?", "How many legs does a spider have?", "What is the boiling point of water?",
]
STATEMENTS = [
    "Paris is the capital of France.", "Paris is the capital of Italy.", "Seven plus five equals twelve.",
    "Seven plus five equals thirteen.", "A triangle has three sides.", "A triangle has four sides.",
    "Ice melts when it is heated.", "Ice melts when it is cooled.", "In Moby-Dick, Ahab hunts a white whale.",
    "In Moby-Dick, Ahab hunts a giant squid.", "Torturing animals for fun is wrong.",
    "Torturing animals for fun is good.",
]


def sample(base: str, max_tokens: int) -> dict[str, Any]:
    model = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
    chats = []
    for p in PROMPTS:
        r = httpx.post(f"{base}/v1/chat/completions", timeout=600, json={
            "model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
            "temperature": 0, "logprobs": True, "top_logprobs": 5, "probes": "all"})
        r.raise_for_status()
        ch = r.json()["choices"][0]
        chats.append({"tokens": [t["token"] for t in ch["logprobs"]["content"]],
                      "logprobs": [t["logprob"] for t in ch["logprobs"]["content"]],
                      "probe_scores": {k: v["tokens"] for k, v in ch["probe_scores"].items()}})
    r = httpx.post(f"{base}/v1/probes/score", json={"model": model, "input": STATEMENTS}, timeout=600)
    r.raise_for_status()
    return {"chats": chats, "statements": [d["scores"] for d in r.json()["data"]]}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Token agreement and the largest differences over the positions both runs share."""
    same = total = 0
    lp_diff = probe_diff = 0.0
    for x, y in zip(a["chats"], b["chats"], strict=True):
        total += len(x["tokens"])
        k = next((i for i, (s, t) in enumerate(zip(x["tokens"], y["tokens"], strict=False)) if s != t),
                 min(len(x["tokens"]), len(y["tokens"])))
        same += k
        upto = min(k + 1, len(x["tokens"]), len(y["tokens"]))  # the first divergent position shares its prefix
        lp_diff = max([lp_diff, *(abs(p - q) for p, q in zip(x["logprobs"][:upto], y["logprobs"][:upto], strict=True))])
        for name, xs in x["probe_scores"].items():
            ys = y["probe_scores"][name]
            probe_diff = max([probe_diff, *(abs(p - q) for p, q in zip(xs[:upto], ys[:upto], strict=True)
                                            if p is not None and q is not None)])
    stmt = max(abs(p[k] - q[k]) for p, q in zip(a["statements"], b["statements"], strict=True) for k in p
               if p[k] is not None and q[k] is not None)
    return {"tokens_equal_before_divergence": same / total, "max_logprob_diff": lp_diff,
            "max_token_probe_diff": probe_diff, "max_statement_probe_diff": stmt}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="packaged alias or HF folder")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    runs: dict[str, Any] = {}
    t0 = time.time()
    for dtype in ("float32", "bfloat16"):
        srv = Server.truthsteer(env={"TRUTHSTEER_MODEL": args.model, "TRUTHSTEER_DTYPE": dtype})
        try:
            runs[dtype] = sample(srv.base, args.max_tokens)
        finally:
            srv.stop()
    res = {"model": args.model, "prompts": len(PROMPTS), "statements": len(STATEMENTS),
           "max_tokens": args.max_tokens, **compare(runs["float32"], runs["bfloat16"]), "machine": machine(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": time.time() - t0, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dtype-parity-{Path(args.model).name}.json"
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
