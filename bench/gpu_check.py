"""`make gpu-check` / `python -m bench.gpu_check`: truthsteer's ops under CUDA graphs, torch only.

Needs nothing but PyTorch and numpy (no vLLM): it imports only :mod:`steering.ops` and
:mod:`steering.vllm.custom_op` from the project. On a CUDA machine it builds a tiny llama-like
stack with the ops installed the way the worker runtime installs them (:mod:`bench.gpu_stack`)
and checks, over random request mixes (:mod:`bench.gpu_mix`: prefill chunks and decodes, steered
or not with add / ablate / clamp on any positions, probes, stashes) whose tables are refreshed in
place between replays:

* ``reference``: eager execution equals a plain-code reference (ops applied per request), and
  steered mixes do change the output (the comparison can fail);
* ``graph_fp32`` / ``graph_bf16``: replays of CUDA graphs captured once per batch size equal eager
  execution of the same step;
* ``compiled_graph``: torch.compile (Inductor) captured in CUDA graphs, as vLLM runs a model,
  equals eager;
* ``reduce_overhead``: torch.compile(mode="reduce-overhead") (Inductor's own CUDA-graph trees)
  equals eager, and Inductor did not skip CUDA graphs;
* ``modes`` (CPU only): the skip-idle and all-slots modes of the ops give bit-identical results;

then times the ops' cost per layer against the layer (:mod:`bench.gpu_bench`). With ``--device
cpu`` the same logic runs on CPU in all-slots mode (CUDA-graph stages skipped, ``compiled_graph``
compiles without capture). Without a CUDA device the default run is skipped with the reason. One
summary line on stdout; the full result as JSON at ``--out``. Exit status 1 if a stage failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gpu_bench import run_bench
from bench.gpu_mix import (
    Mix,
    Outputs,
    Request,
    collect,
    fill,
    inputs,
    max_rel_err,
    random_mix,
    reference,
)
from bench.gpu_stack import Buffers, Directions, StackShape, TinyLlama, build, capture

CPU_SHAPE = StackShape()
CUDA_SHAPE = StackShape(hidden=256, layers=4, heads=8, intermediate=512, vocab=512, slots=4, directions=4,
                        max_tokens=256, max_reqs=64)
CPU_BENCH = StackShape(hidden=256, layers=2, heads=4, intermediate=1024, slots=4, directions=4, max_reqs=128)
CUDA_BENCH = StackShape(hidden=2048, layers=4, heads=16, intermediate=8192, slots=4, directions=4, max_reqs=256)
TOL = {"reference": 1e-4, "graph_fp32": 1e-5, "graph_bf16": 1e-2, "compiled_graph": 1e-4, "reduce_overhead": 1e-4,
       "modes": 0.0}

Runner = Callable[[int, Mix, np.ndarray, np.ndarray], tuple[Outputs, Outputs]]


@dataclass
class Stage:
    name: str
    status: str = "pass"  # pass | fail | skipped
    reason: str = ""
    replays: int = 0
    max_rel_err: float = 0.0
    tolerance: float = 0.0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ctx:
    device: torch.device
    shape: StackShape
    sizes: tuple[int, ...]
    mixes: int
    seed: int
    deadline: float


def _tensors(ctx: Ctx, ids: np.ndarray, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(ids).to(ctx.device), torch.from_numpy(pos).to(ctx.device)


def _loop(st: Stage, ctx: Ctx, run: Runner, sizes: tuple[int, ...] | None = None) -> None:
    """Run ``ctx.mixes`` random mixes at each batch size, comparing what ``run`` returns."""
    rng = np.random.default_rng(ctx.seed)
    st.tolerance = TOL[st.name]
    for size in sizes or ctx.sizes:
        for _ in range(ctx.mixes):
            if time.monotonic() > ctx.deadline:
                st.notes["cut_short"] = "time budget reached"
                break
            mix = random_mix(rng, ctx.shape, size)
            ids, pos = inputs(rng, ctx.shape, mix, size)
            got, want = run(size, mix, ids, pos)
            st.max_rel_err = max(st.max_rel_err, max_rel_err(got, want))
            st.replays += 1
    if st.replays == 0:
        st.status, st.reason = "skipped", "no time left in the budget"
    elif st.max_rel_err > st.tolerance:
        st.status, st.reason = "fail", f"max relative error {st.max_rel_err:.3g} > {st.tolerance:g}"


def _built(ctx: Ctx, dtype: torch.dtype = torch.float32, all_slots: bool = True,
           active_device: torch.device | None = None) -> tuple[TinyLlama, Buffers, Directions]:
    return build(ctx.shape, ctx.device, dtype, ctx.seed, all_slots, active_device)


def stage_reference(st: Stage, ctx: Ctx) -> None:
    model, bufs, dirs = _built(ctx)
    changed = [0, 0]

    def run(size: int, mix: Mix, ids: np.ndarray, pos: np.ndarray) -> tuple[Outputs, Outputs]:
        x, p = _tensors(ctx, ids, pos)
        fill(bufs, ctx.shape, dirs, mix)
        got = collect(model(x, p), bufs, mix)
        want = reference(model, dirs, mix, x, p)
        if mix.steered:  # the comparison must be able to fail: steering changes the output
            plain = reference(model, dirs, Mix(tuple(_unsteered(mix))), x, p)
            changed[0] += int(float((plain.final - want.final).abs().max()) > 1e-3)
            changed[1] += 1
        return got, want

    _loop(st, ctx, run)
    st.notes["steered_mixes_changed"] = f"{changed[0]}/{changed[1]}"
    if changed[0] != changed[1]:
        st.status, st.reason = "fail", "a steered mix left the output unchanged"


def _unsteered(mix: Mix) -> list[Request]:
    return [replace(r, entries=()) for r in mix.requests]


def stage_graph(st: Stage, ctx: Ctx, dtype: torch.dtype) -> None:
    model, bufs, dirs = _built(ctx, dtype)
    static = {s: (torch.zeros(s, dtype=torch.int64, device=ctx.device),
                  torch.zeros(s, dtype=torch.int64, device=ctx.device)) for s in ctx.sizes}
    graphs = {s: capture(lambda s=s: model(*static[s])) for s in ctx.sizes}  # type: ignore[misc]

    def run(size: int, mix: Mix, ids: np.ndarray, pos: np.ndarray) -> tuple[Outputs, Outputs]:
        fill(bufs, ctx.shape, dirs, mix)
        x, p = static[size]
        x.copy_(torch.from_numpy(ids))
        p.copy_(torch.from_numpy(pos))
        graph, out = graphs[size]
        graph.replay()
        got = collect(out, bufs, mix)
        return got, collect(model(*_tensors(ctx, ids, pos)), bufs, mix)

    _loop(st, ctx, run)


def stage_compiled(st: Stage, ctx: Ctx) -> None:
    model, bufs, dirs = _built(ctx)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    cuda = ctx.device.type == "cuda"
    sizes = (ctx.sizes[0], ctx.sizes[-1])  # each size is its own compilation
    static = {s: (torch.zeros(s, dtype=torch.int64, device=ctx.device),
                  torch.zeros(s, dtype=torch.int64, device=ctx.device)) for s in sizes}
    graphs = {s: capture(lambda s=s: compiled(*static[s])) for s in sizes} if cuda else {}  # type: ignore[misc]
    st.notes["cuda_graphs"] = cuda

    def run(size: int, mix: Mix, ids: np.ndarray, pos: np.ndarray) -> tuple[Outputs, Outputs]:
        fill(bufs, ctx.shape, dirs, mix)
        x, p = _tensors(ctx, ids, pos)
        if cuda:
            static[size][0].copy_(x)
            static[size][1].copy_(p)
            graph, out = graphs[size]
            graph.replay()
        else:
            out = compiled(x, p)
        got = collect(out, bufs, mix)
        return got, collect(model(x, p), bufs, mix)

    _loop(st, ctx, run, sizes)


class _SkipLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "cudagraph" in msg.lower():
            self.messages.append(msg[:300])


def stage_reduce_overhead(st: Stage, ctx: Ctx) -> None:
    from torch._dynamo.utils import counters

    # Inductor's CUDA-graph trees refuse CPU inputs: the (never read) active flags go on the GPU
    model, bufs, dirs = _built(ctx, active_device=ctx.device)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True, dynamic=False)
    handler = _SkipLog()
    logging.getLogger("torch").addHandler(handler)
    torch._logging.set_logs(perf_hints=True)  # type: ignore[attr-defined]
    skips0 = counters["inductor"]["cudagraph_skips"]

    def run(size: int, mix: Mix, ids: np.ndarray, pos: np.ndarray) -> tuple[Outputs, Outputs]:
        fill(bufs, ctx.shape, dirs, mix)
        x, p = _tensors(ctx, ids, pos)
        torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        got = collect(compiled(x, p), bufs, mix)
        return got, collect(model(x, p), bufs, mix)

    try:
        _loop(st, ctx, run, sizes=(ctx.sizes[1],))  # one size: each one is its own compilation
    finally:
        logging.getLogger("torch").removeHandler(handler)
        torch._logging.set_logs()  # type: ignore[attr-defined]
    skips = counters["inductor"]["cudagraph_skips"] - skips0
    st.notes.update(cudagraph_skips=skips, skip_messages=handler.messages[:5])
    if skips and st.status == "pass":
        st.status, st.reason = "fail", f"Inductor skipped CUDA graphs {skips} time(s): {handler.messages[:1]}"


def stage_modes(st: Stage, ctx: Ctx) -> None:
    skip, sbufs, dirs = _built(ctx, all_slots=False)
    full, fbufs, _ = _built(ctx, all_slots=True)

    def run(size: int, mix: Mix, ids: np.ndarray, pos: np.ndarray) -> tuple[Outputs, Outputs]:
        x, p = _tensors(ctx, ids, pos)
        fill(sbufs, ctx.shape, dirs, mix)
        fill(fbufs, ctx.shape, dirs, mix)
        return collect(full(x, p), fbufs, mix), collect(skip(x, p), sbufs, mix)

    _loop(st, ctx, run)


def run_stage(name: str, ctx: Ctx, fn: Callable[[Stage, Ctx], None], skip: str = "") -> Stage:
    st = Stage(name)
    if not skip and time.monotonic() > ctx.deadline:
        skip = "no time left in the budget"
    if skip:
        st.status, st.reason = "skipped", skip
        return st
    t0 = time.monotonic()
    try:
        with torch.no_grad():
            fn(st, ctx)
    except Exception as e:  # a check script: record the failure and go on with the other stages
        st.status = "fail"
        st.reason = f"{type(e).__name__}: {str(e)[:400]}"
        st.notes["traceback"] = traceback.format_exc()[-2000:]
    st.seconds = round(time.monotonic() - t0, 2)
    return st


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                           "device": device.type, "cuda_available": torch.cuda.is_available(),
                           "platform": platform.platform()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    return env


def stages(ctx: Ctx) -> list[Stage]:
    cuda = ctx.device.type == "cuda"
    no_graphs = "" if cuda else "CUDA graphs need a CUDA device"
    return [
        run_stage("reference", ctx, stage_reference),
        run_stage("modes", ctx, stage_modes, "" if not cuda else "on CUDA the ops always run all slots"),
        run_stage("graph_fp32", ctx, lambda st, c: stage_graph(st, c, torch.float32), no_graphs),
        run_stage("graph_bf16", ctx, lambda st, c: stage_graph(st, c, torch.bfloat16), no_graphs),
        run_stage("compiled_graph", ctx, stage_compiled),
        run_stage("reduce_overhead", ctx, stage_reduce_overhead, no_graphs),
    ]


def bench(device: torch.device, skip: bool) -> dict[str, Any]:
    if skip:
        return {"status": "skipped", "reason": "--no-bench"}
    t0 = time.monotonic()
    try:
        if device.type == "cuda":
            out = run_bench(CUDA_BENCH, (8, 64, 512), device, torch.bfloat16, iters=50, reps=5)
        else:
            out = run_bench(CPU_BENCH, (8, 64), device, torch.float32, iters=3, reps=3)
        out["status"] = "pass"
    except Exception as e:  # a check script: record the failure, keep the correctness results
        out = {"status": "fail", "reason": f"{type(e).__name__}: {str(e)[:400]}",
               "traceback": traceback.format_exc()[-2000:]}
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def summary(result: dict[str, Any]) -> str:
    if result["status"] == "skipped":
        return f"gpu-check: SKIPPED: {result['reason']}"
    env = result["environment"]
    where = env.get("gpu", env["device"])
    parts = [f"gpu-check: {result['status'].upper()} on {where} (torch {env['torch']})"]
    for st in result["stages"]:
        if st["status"] == "skipped":
            parts.append(f"{st['name']} skipped")
        elif st["status"] == "fail":
            parts.append(f"{st['name']} FAIL after {st['replays']} replays: {st['reason'][:80]}")
        else:
            parts.append(f"{st['name']} {st['status']} {st['replays']} replays err {st['max_rel_err']:.1e}")
    b = result["bench"]
    if b["status"] == "pass":
        fr = ", ".join(f"T={r['tokens']} +{100 * r['added_fraction']['all']:.0f}%" for r in b["rows"])
        parts.append(f"ops/layer {fr}")
    else:
        parts.append(f"bench {b['status']}")
    parts.append(f"{result['seconds']:.0f} s")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cuda (default; skipped without a CUDA device) or cpu (the same logic, no graphs)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu-check.json"), help="JSON result")
    ap.add_argument("--mixes", type=int, default=6, help="random request mixes per batch size and stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=150.0, help="stop starting new replays after this")
    ap.add_argument("--no-bench", action="store_true", help="skip the micro-benchmark")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    device = torch.device(args.device)
    result: dict[str, Any]
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda})"
        result = {"status": "skipped", "reason": reason, "environment": environment(torch.device("cpu"))}
    else:
        cuda = device.type == "cuda"
        if not cuda:  # CPU runs check logic on shared machines: one thread avoids OpenMP stalls
            torch.set_num_threads(1)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        ctx = Ctx(device, CUDA_SHAPE if cuda else CPU_SHAPE, (8, 64, 256) if cuda else (16, 64), args.mixes,
                  args.seed, t0 + args.budget_s)
        done = stages(ctx)
        failed = any(st.status == "fail" for st in done)
        result = {"status": "fail" if failed else "pass", "environment": environment(device),
                  "stages": [asdict(st) for st in done], "bench": bench(device, args.no_bench)}
        if result["bench"]["status"] == "fail":
            result["status"] = "fail"
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = summary(result)
    result["summary"] = line
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(line, flush=True)
    return 1 if result["status"] == "fail" else 0


if __name__ == "__main__":
    raise SystemExit(main())
