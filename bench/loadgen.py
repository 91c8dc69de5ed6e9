"""Throughput and latency over the OpenAI API: ``make bench`` / ``python -m bench.loadgen [--quick]``.

Two load shapes, every scenario of bench/scenarios.py side by side in one run:
  closed loop: fixed prompts (bench.steering.workload) and max_tokens, greedy, at concurrency
               levels (1, 8, 32, 64): each level sends its requests with at most that many in flight;
  poisson:     open loop, Poisson arrivals (fixed seed) with mixed prompt and output lengths, where
               continuous batching matters.
Streams every request with ``ignore_eos`` (fixed output lengths); TTFT is the first token-carrying
chunk, ITL the gaps between them; tokens from ``usage``. A scenario the server rejects (4xx, e.g. ``decoding`` before DoLa is wired) is
recorded as "unsupported (400)". Plain vLLM (its own server, same engine settings) and truthsteer
run one after the other; the HF transformers ``generate`` baseline with a steering hook runs the
same workloads in-process (bench/hf_baseline.py). Writes bench/results/loadgen-latest.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import hf_baseline, loadreport
from bench.loadstats import RequestTiming, poisson_arrivals, summarize
from bench.scenarios import SCENARIOS, Scenario
from bench.servers import Server, machine
from bench.steering import RESULTS, workload


@dataclass(frozen=True)
class Req:
    prompt: str
    max_tokens: int
    at: float  # arrival offset in seconds (0 for the closed loop)


@dataclass(frozen=True)
class Shape:
    name: str
    requests: list[Req]
    concurrency: int | None  # None: open loop (every request sent at its arrival time)


class Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def closed_shape(concurrency: int, n: int, tokens: int) -> Shape:
    return Shape(f"c={concurrency}", [Req(p, tokens, 0.0) for p in workload(n)], concurrency)


def poisson_shape(n: int, rate: float, out_lens: tuple[int, ...], seed: int) -> Shape:
    rng = random.Random(seed)
    base = workload(n)
    reqs = [Req(" ".join([base[i]] * rng.choice((1, 2, 4, 8))), rng.choice(out_lens), at)
            for i, at in enumerate(poisson_arrivals(n, rate, seed))]
    return Shape(f"poisson {rate:g}/s", reqs, None)


async def one(client: httpx.AsyncClient, base: str, model: str, req: Req, extra: dict[str, Any]) -> RequestTiming:
    # ignore_eos (vLLM's extension, both servers): every request generates exactly max_tokens, so
    # scenarios that change the text (steering, DoLa) are compared on the same amount of work
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **extra}
    start = time.perf_counter()
    times: list[float] = []
    tokens = 0
    async with client.stream("POST", f"{base}/v1/completions", json=body) as r:
        if r.status_code >= 400:
            text = (await r.aread()).decode(errors="replace")
            raise Rejected(r.status_code, text[:300])
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if any(c.get("text") for c in chunk.get("choices") or []):
                times.append(time.perf_counter())
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return RequestTiming(start, tuple(times), tokens)


async def run_shape(base: str, model: str, shape: Shape, sc: Scenario) -> dict[str, float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        sem = asyncio.Semaphore(shape.concurrency or len(shape.requests))
        t0 = time.perf_counter()

        async def send(i: int, req: Req) -> RequestTiming:
            await asyncio.sleep(max(0.0, t0 + req.at - time.perf_counter()))
            async with sem:
                return await one(client, base, model, req, sc.extra(i))

        timings = await asyncio.gather(*[send(i, r) for i, r in enumerate(shape.requests)])
        return summarize(timings, time.perf_counter() - t0)


def bench_server(base: str, scenarios: list[Scenario], shapes: list[Shape], out: dict[str, Any]) -> None:
    model = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
    for sc in scenarios:
        row: dict[str, Any] = {}
        try:  # warm-up, and find out whether the server takes this scenario at all
            asyncio.run(run_shape(base, model, closed_shape(2, 2, 4), sc))
            for shape in shapes:
                row[shape.name] = asyncio.run(run_shape(base, model, shape, sc))
                print(f"{sc.name:<32} {shape.name:<14} {row[shape.name]['tokens_per_s']:8.1f} tok/s", flush=True)
        except Rejected as e:
            row = {"unsupported": f"unsupported ({e.status})", "error": str(e)}
            print(f"{sc.name:<32} unsupported ({e.status})", flush=True)
        out[sc.name] = row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU run: levels 1 and 8, short outputs")
    ap.add_argument("--levels", default=None, help="comma-separated concurrency levels (default 1,8,32,64)")
    ap.add_argument("--tokens", type=int, default=None, help="max_tokens of the closed-loop shape (default 64)")
    ap.add_argument("--min-requests", type=int, default=None,
                    help="requests per closed-loop level: max(level, this) (default 16)")
    ap.add_argument("--poisson-requests", type=int, default=None)
    ap.add_argument("--poisson-rate", type=float, default=None, help="arrivals per second")
    ap.add_argument("--scenarios", default=None, help="comma-separated scenario names (default: all)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF transformers baseline")
    ap.add_argument("--vllm-base", default=None, help="URL of a running plain vLLM server (default: start one)")
    ap.add_argument("--truthsteer-base", default=None, help="URL of a running truthsteer server (default: start one)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    q = args.quick
    levels = [int(x) for x in (args.levels or ("1,8" if q else "1,8,32,64")).split(",")]
    tokens = args.tokens or (16 if q else 64)
    floor = args.min_requests or (2 if q else 16)
    shapes = [closed_shape(c, max(c, floor), tokens) for c in levels]
    shapes.append(poisson_shape(args.poisson_requests or (8 if q else 128), args.poisson_rate or (2.0 if q else 8.0),
                                (8, 16, 32) if q else (16, 32, 64, 128), seed=0))
    chosen = [s for s in SCENARIOS if args.scenarios is None or s.name in args.scenarios.split(",")]
    results: dict[str, Any] = {}
    t0 = time.time()
    running = {"vllm": args.vllm_base, "truthsteer": args.truthsteer_base}
    for kind, start in (("vllm", Server.plain_vllm), ("truthsteer", Server.truthsteer)):
        group = [s for s in chosen if s.server == kind]
        if not group:
            continue
        url = running[kind]
        if url:  # one engine at a time: never start a second one beside a running server
            bench_server(url, group, shapes, results)
            continue
        server = start()
        try:
            bench_server(server.base, group, shapes, results)
        finally:
            server.stop()
    if not args.no_hf:
        results["HF generate + steering hook"] = hf_baseline.run(shapes)
    res = {"benchmark": "loadgen", "machine": machine(), "quick": q, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": time.time() - t0,
           "shapes": {s.name: {"requests": len(s.requests), "concurrency": s.concurrency,
                               "max_tokens": sorted({r.max_tokens for r in s.requests})} for s in shapes},
           "scenarios": results, "ratios_to_plain_vllm": loadreport.ratios(results)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "loadgen-quick" if q else "loadgen-latest"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = loadreport.markdown(res)
    (args.out / f"{stem}.md").write_text(md)
    loadreport.plot(res, args.out / f"{stem}.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
