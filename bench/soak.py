"""Soak test: mixed traffic against a real server for a long time (30 minutes by default).

Concurrent clients draw scenarios from :data:`SCENARIOS` (the ``openai`` client and httpx): chat
and completions, streams, steering with every op, probes, DoLa and fixed-layer contrast, gated
steering and decoding, abstention, ``n > 1``, probe scoring, bad inputs (which must be 4xx), and
clients that hang up mid-stream. Greedy spot checks repeat requests whose solo results were
recorded before the traffic started and must equal them. The API and engine processes' RSS is
sampled every ``--sample-s``; the report (``bench/soak_report.py``) goes to bench/results/.

    python -m bench.soak --minutes 30            # starts its own server (what `make soak` runs)
    python -m bench.soak --base URL --pid PID    # an already running server (PID: its API process)
"""

from __future__ import annotations

import argparse
import datetime
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.servers import Server, machine
from bench.soak_report import Sample, Tally, rss_of, write_report

SPOT = [  # (endpoint, body) pairs whose greedy results are recorded solo, then re-checked under load
    ("completions", {"prompt": "The city of Paris is located in", "max_tokens": 12}),
    ("chat", {"messages": [{"role": "user", "content": "Is the earth flat?"}], "max_tokens": 12,
              "steering": [{"direction": "truth", "strength": 4.0}]}),
    ("completions", {"prompt": "The capital of Australia is", "max_tokens": 8, "probes": ["truth"]}),
]


@dataclass
class Ctx:
    base: str
    model: str
    http: httpx.Client
    rng: random.Random
    solo: list[str]


def _post(ctx: Ctx, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    return ctx.http.post(ctx.base + path, json={"model": ctx.model, "temperature": 0, **body})


def _text(endpoint: str, data: dict[str, Any]) -> str:
    c = data["choices"][0]
    return str(c["message"]["content"] if endpoint == "chat" else c["text"])


def _gen(endpoint: str, extra: dict[str, Any], tokens: int = 12) -> Callable[[Ctx], tuple[int, str | None]]:
    def run(ctx: Ctx) -> tuple[int, str | None]:
        body = {"messages": [{"role": "user", "content": ctx.rng.choice(["Where is Lyon?", "Is ice cold?"])}]} \
            if endpoint == "chat" else {"prompt": ctx.rng.choice(["The city of Rome is in", "Water boils at"])}
        r = _post(ctx, endpoint, {"max_tokens": tokens, **body, **extra})
        ok = r.status_code == 200 and len(r.json()["choices"]) == extra.get("n", 1)
        return r.status_code, None if ok else r.text[:200]
    return run


def _stream(endpoint: str, hang_up: bool) -> Callable[[Ctx], tuple[int, str | None]]:
    def run(ctx: Ctx) -> tuple[int, str | None]:
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        body = {"messages": [{"role": "user", "content": "Tell me about Paris."}]} if endpoint == "chat" \
            else {"prompt": "Once upon a time"}
        with ctx.http.stream("POST", ctx.base + path, json={"model": ctx.model, "max_tokens": 24, "stream": True,
                                                             "probes": ["truth"], **body}) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if hang_up and len(lines) >= 2:
                    return 0, None  # the client goes away mid-stream
            ok = r.status_code == 200 and "data: [DONE]" in lines
        return r.status_code, None if ok else f"no [DONE]: {lines[-3:]}"
    return run


def _bad(ctx: Ctx) -> tuple[int, str | None]:
    body: dict[str, Any] = ctx.rng.choice([{"prompt": []}, {"prompt": "x", "max_tokens": -1},
                           {"prompt": "x", "steering": [{"direction": "nope"}]},
                           {"prompt": "x", "decoding": {"method": "dola", "premature_layers": [99]}},
                           {"prompt": "x", "probes": ["nope"]}, {"prompt": "x", "temperature": 9}])
    r = _post(ctx, "completions", body)
    return r.status_code, None if r.status_code == 400 and "error" in r.json() else r.text[:200]


def _score(ctx: Ctx) -> tuple[int, str | None]:
    r = ctx.http.post(ctx.base + "/v1/probes/score", json={"model": ctx.model, "input": ["Paris is in France.",
                                                                                      "Paris is in Japan."]})
    return r.status_code, None if r.status_code == 200 and len(r.json()["data"]) == 2 else r.text[:200]


def _meta(ctx: Ctx) -> tuple[int, str | None]:
    codes = [ctx.http.get(ctx.base + p).status_code for p in ("/health", "/v1/models", "/v1/directions", "/metrics")]
    return max(codes), None if codes == [200] * 4 else str(codes)


def _spot(ctx: Ctx, tally: Tally) -> tuple[int, str | None]:
    i = ctx.rng.randrange(len(SPOT))
    endpoint, body = SPOT[i]
    r = _post(ctx, endpoint, body)
    if r.status_code == 200 and _text(endpoint, r.json()) != ctx.solo[i]:
        tally.mismatches.append(f"spot {i}: {_text(endpoint, r.json())!r} != solo {ctx.solo[i]!r}")
    return r.status_code, None if r.status_code == 200 else r.text[:200]


GATE = {"probe": "truth", "below": 0.5, "window": 2, "hold": 2}
SCENARIOS: dict[str, Callable[[Ctx], tuple[int, str | None]]] = {
    "chat": _gen("chat", {}),
    "completion": _gen("completions", {}),
    "steer add": _gen("chat", {"steering": [{"direction": "truth", "op": "add", "strength": 4}]}),
    "steer ablate": _gen("completions", {"steering": [{"direction": "sycophancy", "op": "ablate"}]}),
    "steer clamp": _gen("completions", {"steering": [{"direction": "truth", "op": "clamp"}]}),
    "probes": _gen("completions", {"probes": "all"}),
    "dola": _gen("completions", {"decoding": {"method": "dola", "premature_layers": "high"}}, 6),
    "contrast": _gen("chat", {"decoding": {"method": "contrast", "premature_layers": [10]}}),
    "gated steering": _gen("chat", {"steering": [{"direction": "truth", "strength": 4, "gate": GATE}]}),
    "gated dola": _gen("completions", {"decoding": {"method": "dola", "premature_layers": "high", "gate": GATE}}, 6),
    "abstain": _gen("chat", {"abstain": {"probe": "truth", "below": 0.5}}),
    "n=2": _gen("completions", {"n": 2, "temperature": 0.8, "seed": 3}),
    "stream chat": _stream("chat", False),
    "stream completion": _stream("completions", False),
    "hang up mid-stream": _stream("completions", True),
    "bad input": _bad,
    "probe score": _score,
    "metadata": _meta,
}


def run_soak(base: str, pid: int, seconds: float, workers: int, sample_s: float, seed: int) -> tuple[Tally, list[Sample], int]:
    """Drive the traffic; returns the tally, the memory samples and the number of spot checks."""
    http = httpx.Client(timeout=300)
    model = http.get(base + "/v1/models").json()["data"][0]["id"]
    solo_ctx = Ctx(base, model, http, random.Random(seed), [])
    solo = [_text(e, _post(solo_ctx, e, b).json()) for e, b in SPOT]
    tally, samples, spots = Tally(), [], [0]
    start = time.monotonic()
    stop = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        ctx = Ctx(base, model, httpx.Client(timeout=300), random.Random(seed * 1000 + k), solo)
        names = [*SCENARIOS, "spot check"]
        while not stop.is_set():
            name = ctx.rng.choice(names)
            try:
                status, problem = _spot(ctx, tally) if name == "spot check" else SCENARIOS[name](ctx)
            except httpx.HTTPError as e:  # a cut connection or a timeout: counted as a server failure
                status, problem = 599, f"{type(e).__name__}: {e}"
            with lock:
                spots[0] += name == "spot check"
                tally.add(name, status, problem)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    while time.monotonic() - start < seconds:
        samples.append(Sample(time.monotonic() - start, *rss_of(pid)))
        stop.wait(min(sample_s, max(0.0, seconds - (time.monotonic() - start))))
    stop.set()
    for t in threads:
        t.join(330)
    samples.append(Sample(time.monotonic() - start, *rss_of(pid)))
    return tally, samples, spots[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-minutes", type=float, default=None, help="default: a fifth of the run")
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--sample-s", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-growth", type=float, default=0.05)
    ap.add_argument("--base", default=None, help="a running server (default: start one)")
    ap.add_argument("--pid", type=int, default=None, help="its API process (with --base)")
    ap.add_argument("--note", default="", help="a line for the report (e.g. the machine was shared)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/soak-latest"))
    args = ap.parse_args(argv)
    server = None if args.base else Server.truthsteer()
    base, pid = (args.base, args.pid) if server is None else (server.base, server.proc.pid)
    if pid is None:
        ap.error("--base needs --pid")
    try:
        tally, samples, spots = run_soak(base, pid, 60 * args.minutes, args.workers, args.sample_s, args.seed)
    finally:
        if server is not None:
            server.stop()
    warmup = 60 * (args.warmup_minutes if args.warmup_minutes is not None else args.minutes / 5)
    meta = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "duration_s": 60 * args.minutes, "workers": args.workers, "warmup_s": warmup, "sample_s": args.sample_s,
            "spot_checks": spots, "note": args.note}
    failed = write_report(args.out, meta, tally, samples, args.max_growth)
    print(args.out.with_suffix(".md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
