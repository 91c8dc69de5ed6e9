"""Cost of inline vectors, pushed directions and activation capture: `python -m bench.live`.

Starts the real server (or uses ``--url``), pushes a copy of the ``truth`` bundle as
``truth-live``, then runs interleaved rounds (``--repeats``, median of each) of:

* generation, ``--requests`` concurrent completions x ``--tokens`` new tokens, greedy: no
  steering; ``truth`` named (start-up bundle); ``truth-live`` (live registry); the same vectors
  inline (base64 per layer). All three steer the same three layers with the same vectors, so they
  generate the same tokens: the ratios to "no steering" are the costs of each route.
* prefill only, ``--requests`` concurrent texts: ``/v1/completions`` with ``max_tokens: 1``
  (baseline) against ``/v1/activations`` at the last position of 1 layer, of all layers, and at
  all positions of 1 layer.

Writes bench/results/live-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.servers import Server
from bench.steering import workload, write_result
from steering.bundle import DirectionBundle, load_bundle, save_bundle
from steering.engine import DEFAULT_DIRECTIONS

LAYERS = [12, 13, 14]


async def gather_rate(fn: Callable[[httpx.AsyncClient, str], Any], prompts: list[str]) -> float:
    async with httpx.AsyncClient(timeout=1800) as c:
        t = time.perf_counter()
        counts = await asyncio.gather(*[fn(c, p) for p in prompts])
        return float(sum(counts)) / (time.perf_counter() - t)


def completions(base: str, model: str, tokens: int, steering: list[dict[str, Any]] | None) -> Callable[..., Any]:
    async def one(c: httpx.AsyncClient, p: str) -> int:
        body: dict[str, Any] = {"model": model, "prompt": p, "max_tokens": tokens, "temperature": 0,
                                "ignore_eos": True}
        if steering is not None:
            body["steering"] = steering
        r = await c.post(f"{base}/v1/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    return one


def activations(base: str, model: str, layers: list[int], positions: str) -> Callable[..., Any]:
    async def one(c: httpx.AsyncClient, p: str) -> int:
        r = await c.post(f"{base}/v1/activations", json={"model": model, "input": p, "layers": layers,
                                                          "positions": positions})
        r.raise_for_status()
        return 1

    return one


def scenarios(base: str, model: str, tokens: int, num_layers: int) -> dict[str, Callable[..., Any]]:
    truth = load_bundle(DEFAULT_DIRECTIONS / "truth.safetensors")
    vec = {str(k): base64.b64encode(truth.vectors[k].numpy().astype("<f4").tobytes()).decode() for k in LAYERS}
    named = [{"direction": "truth", "strength": 2.0, "layers": LAYERS}]

    async def prefill(c: httpx.AsyncClient, p: str) -> int:
        await completions(base, model, 1, None)(c, p)
        return 1

    return {
        "generate: no steering": completions(base, model, tokens, None),
        "generate: truth (start-up)": completions(base, model, tokens, named),
        "generate: truth-live (registry)": completions(base, model, tokens, [{**named[0], "direction": "truth-live"}]),
        "generate: inline vectors": completions(base, model, tokens, [{"vector": vec, "strength": 2.0}]),
        "prefill: completions max_tokens=1": prefill,
        "prefill: activations last, 1 layer": activations(base, model, [LAYERS[0]], "last"),
        f"prefill: activations last, {num_layers} layers": activations(base, model, list(range(num_layers)), "last"),
        "prefill: activations all positions, 1 layer": activations(base, model, [LAYERS[0]], "all"),
    }


def push_copy(base: str) -> int:
    """Register the truth bundle again as ``truth-live``; returns the model's layer count."""
    truth = load_bundle(DEFAULT_DIRECTIONS / "truth.safetensors")
    tmp = Path(tempfile.mkdtemp(prefix="truthsteer-bench-")) / "truth-live.safetensors"
    save_bundle(DirectionBundle(meta=truth.meta.model_copy(update={"name": "truth-live"}), vectors=truth.vectors,
                                probe_weight=truth.probe_weight), tmp)
    r = httpx.post(f"{base}/v1/directions", json={"data": base64.b64encode(tmp.read_bytes()).decode(),
                                                  "replace": True}, timeout=120)
    r.raise_for_status()
    return truth.meta.model.num_layers


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--url", default=None, help="a running truthsteer server (default: start one)")
    args = ap.parse_args()
    server = None if args.url else Server.truthsteer()
    base = args.url or server.base  # type: ignore[union-attr]
    runs: dict[str, list[float]] = {}
    try:
        model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
        num_layers = push_copy(base)
        prompts = workload(args.requests)
        sc = scenarios(base, model, args.tokens, num_layers)
        for fn in sc.values():  # warm-up
            asyncio.run(gather_rate(fn, prompts[:4]))
        for _ in range(args.repeats):
            for name, fn in sc.items():
                runs.setdefault(name, []).append(asyncio.run(gather_rate(fn, prompts)))
    finally:
        if server is not None:
            server.stop()
    med = {k: statistics.median(v) for k, v in runs.items()}
    gen0, pre0 = med["generate: no steering"], med["prefill: completions max_tokens=1"]
    ratios = {k: round(v / (gen0 if k.startswith("generate") else pre0), 3) for k, v in med.items()}
    result = {"benchmark": "live-steering-and-capture",
              "workload": {"requests": args.requests, "new_tokens": args.tokens, "repeats": args.repeats,
                           "layers": LAYERS},
              "rates": {k: round(v, 2) for k, v in med.items()}, "units": "generate: tok/s; prefill: texts/s",
              "ratios": ratios, "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()}}
    out = write_result("live-latest", result)
    print(f"{'scenario':<46}{'rate':>10}{'ratio':>8}")
    for k, v in med.items():
        print(f"{k:<46}{v:>10.1f}{ratios[k]:>8.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
