"""Steering overhead benchmark: `make bench` / `python -m bench.steering`.

One process, fixed workload (64 concurrent requests x 64 new tokens, greedy, ignore_eos):
  (a) plain vLLM, plugin inert, default compiled mode
  (b) truthsteer engine, no request steered
  (c) truthsteer engine, every request with its own steering config on 3 layers
  (d) truthsteer engine, every request with the same config probe-gated (``GATE``): the truth probe
      is read at every sampling position in the same pass and decides the next step's steering
Both engines stay up (only one computes at a time); (b), (c) and (d) run on the same engine. They
are run in rounds, a-b-c-d, ``--repeats`` times, so slow drifts of the machine hit all alike; the
median of each is reported. Ratios b/a, c/a, d/a and d/b (gated vs unsteered, issue 9's target);
writes bench/results/steering-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor()}


def write_result(stem: str, result: dict[str, Any]) -> Path:
    """``bench/results/<stem>.json`` with the machine, the statistic and the date filled in."""
    full = {**result, "machine": machine_info(), "statistic": "median",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(full, indent=2) + "\n")
    return out


def workload(n: int) -> list[str]:
    topics = ["rivers", "planets", "metals", "birds", "languages", "bridges", "volcanoes", "music"]
    return [f"Request {i}: write a short paragraph about {topics[i % len(topics)]} number {i}." for i in range(n)]


def configs(n: int) -> list[list[dict[str, Any]]]:
    """n distinct configs, each on 3 layers."""
    out = []
    for i in range(n):
        direction = "truth" if i % 2 == 0 else "sycophancy"
        lo = 8 + (i % 6)
        out.append([{"direction": direction, "strength": round(0.5 + 0.05 * i, 3), "layers": [lo, lo + 1, lo + 2]}])
    return out


GATE = {"probe": "truth", "below": 0.5, "window": 2, "hold": 4}


def gated_configs(n: int) -> list[list[dict[str, Any]]]:
    """n requests, each with truth +2 on layers 12-14, gated by the truth probe."""
    return [[{"direction": "truth", "strength": 2.0, "layers": [12, 13, 14], "gate": GATE}] for _ in range(n)]


def timed(llm: Any, prompts: list[str], params: Any, steering: Any) -> float:
    t = time.perf_counter()
    outs = llm.generate(prompts, params, steering=steering)
    dt = time.perf_counter() - t
    toks = sum(len(o.outputs[0].token_ids) for o in outs)
    return toks / dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    from vllm import SamplingParams

    from steering.llm import SteeredLLM

    prompts = workload(args.requests)
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    steer = configs(args.requests)
    gated = gated_configs(args.requests)

    plain = SteeredLLM(model=args.model, steering=False)
    eng = SteeredLLM(model=args.model)
    timed(plain, prompts[:8], params, None)  # warm-up
    timed(eng, prompts[:8], params, steer[:8])
    a_runs: list[float] = []
    b_runs: list[float] = []
    c_runs: list[float] = []
    d_runs: list[float] = []
    for _ in range(args.repeats):
        a_runs.append(timed(plain, prompts, params, None))
        b_runs.append(timed(eng, prompts, params, None))
        c_runs.append(timed(eng, prompts, params, steer))
        d_runs.append(timed(eng, prompts, params, gated))
    a, b, c, d = (statistics.median(r) for r in (a_runs, b_runs, c_runs, d_runs))
    for e in (plain, eng):
        e.llm.llm_engine.engine_core.shutdown()

    result = {
        "benchmark": "steering-overhead",
        "workload": {"requests": args.requests, "new_tokens": args.tokens, "greedy": True, "repeats": args.repeats},
        "tokens_per_s": {"a_plain_vllm": round(a, 2), "b_plugin_unsteered": round(b, 2),
                         "c_distinct_configs_3_layers": round(c, 2), "d_probe_gated": round(d, 2)},
        "ratios": {"b/a": round(b / a, 3), "c/a": round(c / a, 3), "d/a": round(d / a, 3), "d/b": round(d / b, 3)},
        "gate": GATE,
        "runs": {k: [round(x, 2) for x in v] for k, v in (("a", a_runs), ("b", b_runs), ("c", c_runs),
                                                           ("d", d_runs))},
    }
    out = write_result("steering-latest", result)
    print(f"{'config':<34}{'tok/s':>10}{'ratio':>8}")
    print(f"{'(a) plain vLLM':<34}{a:>10.1f}{1.0:>8.3f}")
    print(f"{'(b) truthsteer, unsteered':<34}{b:>10.1f}{b / a:>8.3f}")
    print(f"{'(c) 64 distinct configs, 3 layers':<34}{c:>10.1f}{c / a:>8.3f}")
    print(f"{'(d) probe-gated, 3 layers':<34}{d:>10.1f}{d / a:>8.3f}   (d/b {d / b:.3f})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
