"""Micro-benchmark of truthsteer's in-graph ops against the decoder layer they run in (``bench.gpu_check``).

A stack of identical llama-like layers (:mod:`bench.gpu_stack`) is timed plain and with the ops
added one kind at a time, every layer carrying each op, in all-slots mode (what accelerators run:
every slot of the steering table, every stash row, the probe matmul, whatever the step holds).
Every token is steered in every slot, so the numbers are the op's full cost, which on an
accelerator does not depend on how many requests use it. On CUDA each variant is captured in a
CUDA graph and timed over replays with CUDA events; on CPU it runs eagerly (indicative only).
Reported per layer: microseconds, and each op's added cost as a fraction of the plain layer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.gpu_stack import StackShape, build, capture

VARIANTS = ("plain", "steer", "steer+probe", "steer+probe+stash")


def _timer(device: torch.device, fns: dict[str, Callable[[], Any]], iters: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function: ``reps`` rounds, each timing ``iters`` calls of
    every function in turn (so slow drifts of the machine hit all alike)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                start.record()
                for _ in range(iters):
                    fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3 / iters)
            else:
                t0 = time.perf_counter()
                for _ in range(iters):
                    fn()
                times[name].append((time.perf_counter() - t0) / iters)
    return {name: float(statistics.median(ts)) for name, ts in times.items()}


def _callable(model: torch.nn.Module, ids: torch.Tensor, pos: torch.Tensor) -> Callable[[], Any]:
    if ids.device.type != "cuda":
        return lambda: model(ids, pos)
    graph, _ = capture(lambda: model(ids, pos))
    return graph.replay


def _variant(shape: StackShape, name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model, bufs, _ = build(shape, device, dtype, seed=7, all_slots=True)
    keep = VARIANTS.index(name)  # how many op kinds stay: steer, then probe, then stash
    n = shape.layers
    levels = [1] * n + [2] * len(shape.probe_layers) + [3] * n  # install()'s hook order
    for level, handle in zip(levels, bufs.handles, strict=True):
        if level > keep:
            handle.remove()
    rng = np.random.default_rng(0)
    for i in range(n):  # every token steered in every slot
        bufs.idx[i].copy_(torch.from_numpy(rng.integers(1, shape.directions + 1, size=bufs.idx[i].shape)))
        bufs.coef[i].copy_(torch.from_numpy(rng.uniform(-1, 1, size=bufs.coef[i].shape).astype(np.float32)))
    bufs.srows.copy_(torch.from_numpy(rng.integers(0, min(shape.max_tokens, 8), size=shape.max_reqs)))
    return model


def run_bench(shape: StackShape, tokens: tuple[int, ...], device: torch.device, dtype: torch.dtype,
              iters: int, reps: int) -> dict[str, Any]:
    """Per-layer microseconds of each variant at each token count, and the ops' added fractions."""
    shape = replace(shape, probe_layers=tuple(range(shape.layers)), max_tokens=max(tokens))
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        models = {name: _variant(shape, name, device, dtype) for name in VARIANTS}
        for t in tokens:
            ids = torch.randint(0, shape.vocab, (t,), device=device)
            pos = torch.arange(t, device=device)
            fns = {name: _callable(m, ids, pos) for name, m in models.items()}
            us = {name: 1e6 * sec / shape.layers for name, sec in _timer(device, fns, iters, reps).items()}
            plain = us["plain"]
            rows.append({
                "tokens": t,
                "us_per_layer": {k: round(v, 2) for k, v in us.items()},
                "added_fraction": {
                    "steer": round((us["steer"] - plain) / plain, 4),
                    "probe": round((us["steer+probe"] - us["steer"]) / plain, 4),
                    "stash": round((us["steer+probe+stash"] - us["steer+probe"]) / plain, 4),
                    "all": round((us["steer+probe+stash"] - plain) / plain, 4),
                },
            })
    return {
        "shape": {"hidden": shape.hidden, "intermediate": shape.intermediate, "heads": shape.heads,
                  "layers": shape.layers, "slots": shape.slots, "probes_per_layer": shape.probes_per_layer,
                  "stash_rows": shape.max_reqs, "dtype": str(dtype).removeprefix("torch.")},
        "timing": "CUDA graph replays, CUDA events" if device.type == "cuda" else "eager, perf_counter",
        "iters": iters, "reps": reps, "statistic": "median",
        "rows": rows,
    }
