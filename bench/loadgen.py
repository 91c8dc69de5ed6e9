"""Throughput and latency over the OpenAI API: ``make bench`` / ``python -m bench.loadgen [--quick]``.

Two load shapes, every scenario of bench/scenarios.py side by side in one run:
  closed loop: fixed prompts (bench.steering.workload) and max_tokens, greedy, at concurrency
               levels (1, 8, 32, 64): each level sends its requests with at most that many in flight;
  poisson:     open loop, Poisson arrivals (fixed seed) with mixed prompt and output lengths, where
               continuous batching matters.
Streams every request with ``ignore_eos`` (fixed output lengths); TTFT is the first token-carrying
chunk, ITL the gaps between them; tokens from ``usage``. A scenario the server rejects (4xx) is
recorded as "unsupported (400)". Plain vLLM (its own server, same engine settings) and truthsteer
are both up at once and every shape runs ``--rounds`` interleaved rounds of all scenarios
(:func:`bench_rounds`; ``--sequential``: one server at a time, for a GPU that holds one engine);
ratios are medians of per-round ratios. The HF transformers ``generate`` baseline with a steering
hook runs the same workloads in-process once (bench/hf_baseline.py). Writes
bench/results/loadgen-latest.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import hf_baseline, loadreport
from bench.loadstats import RequestTiming, median_run, poisson_arrivals, rotated, summarize
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


def warm_shape(shape: Shape, tokens: int = 4) -> Shape:
    """An untimed pass before a shape's rounds: its prompts (so every prefill length it will see)
    at its concurrency (so every batch size), with short outputs. Without it the first scenario of
    round 1 pays for the engine's first use of those shapes (compiled graphs, allocator growth)."""
    width = shape.concurrency or 8
    reqs = [Req(r.prompt, min(r.max_tokens, tokens), 0.0) for r in shape.requests[: max(width, 8)]]
    return Shape(f"{shape.name} warm-up", reqs, width)


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


def _model(base: str) -> str:
    return str(httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"])


def bench_rounds(bases: Mapping[str, str], scenarios: list[Scenario], shapes: list[Shape], rounds: int,
                 out: dict[str, Any]) -> None:
    """Every scenario on every shape, ``rounds`` times. Shape by shape, each round runs every
    scenario once, in an order rotated by one scenario per round, so slow drift of the machine
    (clock, neighbours) reaches every scenario alike and round ``r`` of a scenario can be set
    against round ``r`` of plain vLLM (:func:`bench.loadreport.ratios`); an untimed
    :func:`warm_shape` pass of every scenario precedes a shape's rounds. ``bases``: server kind
    (``Scenario.server``) -> URL; a scenario the server rejects is recorded as unsupported."""
    models = {kind: _model(base) for kind, base in bases.items()}
    live: list[Scenario] = []
    for sc in scenarios:
        try:  # warm-up, and find out whether the server takes this scenario at all
            asyncio.run(run_shape(bases[sc.server], models[sc.server], closed_shape(2, 2, 4), sc))
            live.append(sc)
        except Rejected as e:
            out[sc.name] = {"unsupported": f"unsupported ({e.status})", "error": str(e)}
            print(f"{sc.name:<32} unsupported ({e.status})", flush=True)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {sc.name: {} for sc in live}
    for shape in shapes:
        for sc in live:
            asyncio.run(run_shape(bases[sc.server], models[sc.server], warm_shape(shape), sc))
        for r in range(rounds):
            for sc in rotated(live, r):
                m = asyncio.run(run_shape(bases[sc.server], models[sc.server], shape, sc))
                runs[sc.name].setdefault(shape.name, []).append(m)
                print(f"{sc.name:<32} {shape.name:<14} round {r + 1}/{rounds} {m['tokens_per_s']:8.1f} tok/s",
                      flush=True)
    for sc in live:
        out[sc.name] = {name: median_run(ms) for name, ms in runs[sc.name].items()}


STARTERS: dict[str, Callable[[], Server]] = {"vllm": Server.plain_vllm, "truthsteer": Server.truthsteer}


def bench_all(chosen: list[Scenario], shapes: list[Shape], rounds: int, interleave: bool,
              running: Mapping[str, str | None], out: dict[str, Any]) -> None:
    """Start the servers the scenarios need (unless already ``running``) and bench them:
    interleaved with every server up at once, or one server at a time (``interleave=False``: a GPU
    that holds one engine only)."""
    kinds = [k for k in STARTERS if any(s.server == k for s in chosen)]
    started: list[Server] = []
    try:
        bases: dict[str, str] = {}
        for kind in kinds:
            url = running.get(kind)
            if url is None:
                srv = STARTERS[kind]()
                started.append(srv)
                url = srv.base
            bases[kind] = url
            if not interleave:
                bench_rounds({kind: url}, [s for s in chosen if s.server == kind], shapes, rounds, out)
                for srv in started:
                    srv.stop()
                started.clear()
        if interleave:
            bench_rounds(bases, chosen, shapes, rounds, out)
    finally:
        for srv in started:
            srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU run: levels 1 and 8, short outputs")
    ap.add_argument("--levels", default=None, help="comma-separated concurrency levels (default 1,8,32,64)")
    ap.add_argument("--tokens", type=int, default=None, help="max_tokens of the closed-loop shape (default 64)")
    ap.add_argument("--min-requests", type=int, default=None,
                    help="requests per closed-loop level: max(level, this) (default 16)")
    ap.add_argument("--poisson-requests", type=int, default=None)
    ap.add_argument("--poisson-rate", type=float, default=None, help="arrivals per second")
    ap.add_argument("--scenarios", default=None, help="semicolon-separated scenario names (default: all)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per shape (default 3, --quick 1)")
    ap.add_argument("--sequential", action="store_true",
                    help="one server at a time (a GPU that holds one engine); default: both up, rounds interleaved")
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
    chosen = [s for s in SCENARIOS if args.scenarios is None or s.name in args.scenarios.split(";")]
    rounds = args.rounds or (1 if q else 3)
    results: dict[str, Any] = {}
    t0 = time.time()
    bench_all(chosen, shapes, rounds, not args.sequential,
              {"vllm": args.vllm_base, "truthsteer": args.truthsteer_base}, results)
    if not args.no_hf:
        results["HF generate + steering hook"] = hf_baseline.run(shapes)
    res = {"benchmark": "loadgen", "machine": machine(), "quick": q, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": time.time() - t0, "rounds": rounds, "interleaved": not args.sequential,
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
