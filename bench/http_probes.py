"""Probe-score overhead through HTTP: `make bench` / `python -m bench.http_probes`.

Starts the real server (``truthsteer serve``) on a free port and sends the steering benchmark's
workload (64 concurrent completions x 64 new tokens, greedy) through the OpenAI-compatible API:
  (off) no extensions
  (on)  ``probes: ["truth", "sycophancy"]``: every generated token scored by both probes
in alternating rounds (``--repeats``), median of each. Probes never change the tokens, so both
runs generate the same number; the ratio on/off is the cost of the read-out, the side channel and
the per-token scores in the responses. Writes bench/results/http-probes-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx

from bench.servers import Server
from bench.steering import workload, write_result


async def run(base: str, model: str, prompts: list[str], tokens: int, probes: list[str] | None) -> float:
    async with httpx.AsyncClient(timeout=1800) as c:
        async def one(p: str) -> int:
            body: dict[str, Any] = {"model": model, "prompt": p, "max_tokens": tokens, "temperature": 0}
            if probes:
                body["probes"] = probes
            r = await c.post(f"{base}/v1/completions", json=body)
            r.raise_for_status()
            data = r.json()
            if probes:  # the work we pay for must be there
                tok = data["choices"][0]["probe_scores"][probes[0]]["tokens"]
                assert len(tok) == data["usage"]["completion_tokens"]
            return int(data["usage"]["completion_tokens"])

        t = time.perf_counter()
        counts = await asyncio.gather(*[one(p) for p in prompts])
        return sum(counts) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    server = Server.truthsteer()
    base = server.base
    try:
        model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
        prompts = workload(args.requests)
        probes = ["truth", "sycophancy"]
        asyncio.run(run(base, model, prompts[:8], 8, None))  # warm-up
        asyncio.run(run(base, model, prompts[:8], 8, probes))
        off_runs: list[float] = []
        on_runs: list[float] = []
        for _ in range(args.repeats):
            off_runs.append(asyncio.run(run(base, model, prompts, args.tokens, None)))
            on_runs.append(asyncio.run(run(base, model, prompts, args.tokens, probes)))
    finally:
        server.stop()
    off, on = statistics.median(off_runs), statistics.median(on_runs)
    result = {
        "benchmark": "http-probe-overhead",
        "workload": {"requests": args.requests, "new_tokens": args.tokens, "greedy": True, "repeats": args.repeats,
                     "probes": probes, "endpoint": "/v1/completions"},
        "tokens_per_s": {"probes_off": round(off, 2), "probes_on": round(on, 2)},
        "ratios": {"on/off": round(on / off, 3)},
        "runs": {"off": [round(x, 2) for x in off_runs], "on": [round(x, 2) for x in on_runs]},
    }
    out = write_result("http-probes-latest", result)
    print(f"{'HTTP, 64 x 64 tokens':<34}{'tok/s':>10}{'ratio':>8}")
    print(f"{'probes off':<34}{off:>10.1f}{1.0:>8.3f}")
    print(f"{'probes on (truth, sycophancy)':<34}{on:>10.1f}{on / off:>8.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
