"""Cost of head-level (``attn_heads``) steering: ``python -m bench.heads`` (part of ``make bench``).

One truthsteer engine with the shipped bundles plus a head bundle (``--bundle``, default the
shipped ``directions/heads/truth-heads.safetensors``), fixed workload (``--requests`` concurrent x
``--tokens`` new tokens, greedy, ignore_eos), in interleaved rounds:
  (a) plain vLLM, plugin inert
  (b) truthsteer, nothing steered (the o_proj pre-hooks installed, idle)
  (c) every request with its own residual config on 3 layers (as bench.steering's (c))
  (e) every request steering the bundle's heads (all its head layers, its own strength)
Median of each; ratios to (a). Writes bench/results/heads-latest.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.steering import configs, timed, workload, write_result
from steering.bundle import load_bundle
from steering.engine import DEFAULT_DIRECTIONS

BUNDLE = DEFAULT_DIRECTIONS / "heads" / "truth-heads.safetensors"


def head_configs(n: int, name: str) -> list[list[dict[str, Any]]]:
    """n distinct head configs (strengths 1.0 .. ), every selected head of the bundle."""
    return [[{"direction": name, "site": "attn_heads", "strength": round(1.0 + 0.05 * i, 3)}] for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    args = ap.parse_args()

    from vllm import SamplingParams

    from steering.llm import SteeredLLM

    heads = load_bundle(args.bundle)
    assert heads.meta.heads is not None, f"{args.bundle} has no head vectors"
    prompts = workload(args.requests)
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    resid, head = configs(args.requests), head_configs(args.requests, heads.name)
    plain = SteeredLLM(steering=False)
    eng = SteeredLLM(directions=[DEFAULT_DIRECTIONS / "truth.safetensors", DEFAULT_DIRECTIONS / "sycophancy.safetensors",
                                 args.bundle])
    timed(plain, prompts[:8], params, None)  # warm-up
    timed(eng, prompts[:8], params, head[:8])
    runs: dict[str, list[float]] = {"a": [], "b": [], "c": [], "e": []}
    for _ in range(args.repeats):
        runs["a"].append(timed(plain, prompts, params, None))
        runs["b"].append(timed(eng, prompts, params, None))
        runs["c"].append(timed(eng, prompts, params, resid))
        runs["e"].append(timed(eng, prompts, params, head))
    for e in (plain, eng):
        e.llm.llm_engine.engine_core.shutdown()
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "benchmark": "head-steering-overhead",
        "workload": {"requests": args.requests, "new_tokens": args.tokens, "greedy": True, "repeats": args.repeats},
        "bundle": {"path": str(args.bundle), "heads": len(heads.meta.heads.selected),
                   "layers": len(heads.meta.heads.layers)},
        "tokens_per_s": {k: round(v, 2) for k, v in med.items()},
        "ratios": {f"{k}/a": round(v / med["a"], 3) for k, v in med.items()} | {"e/c": round(med["e"] / med["c"], 3)},
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }
    out = write_result("heads-latest", result)
    names = {"a": "(a) plain vLLM", "b": "(b) truthsteer, unsteered", "c": "(c) residual, 3 layers",
             "e": f"(e) {len(heads.meta.heads.selected)} heads on {len(heads.meta.heads.layers)} layers"}
    for k, label in names.items():
        print(f"{label:<36}{med[k]:>10.1f}{med[k] / med['a']:>8.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
