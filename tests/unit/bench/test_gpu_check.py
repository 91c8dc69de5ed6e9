"""bench.gpu_check's logic on CPU: the skip without CUDA, stages that pass, and comparisons that can fail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import gpu_check
from bench.gpu_check import Ctx, Stage, _loop, run_stage, stage_modes, stage_reference
from bench.gpu_mix import Mix, Outputs, collect, fill, random_mix
from bench.gpu_stack import StackShape, build

SHAPE = StackShape(hidden=32, layers=3, heads=2, intermediate=64, vocab=64, slots=2, directions=2,
                   probe_layers=(1,), max_tokens=32, max_reqs=8)


def ctx(mixes: int = 4) -> Ctx:
    return Ctx(torch.device("cpu"), SHAPE, (8, 32), mixes, seed=1, deadline=time.monotonic() + 600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_default_run_is_skipped_with_the_reason_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "skipped" and result["reason"].startswith("no CUDA device")
    assert capsys.readouterr().out.strip() == f"gpu-check: SKIPPED: {result['reason']}"


def test_reference_and_mode_stages_pass_and_steering_changes_the_output() -> None:
    ref = run_stage("reference", ctx(), stage_reference)
    assert (ref.status, ref.replays) == ("pass", 8), ref.reason
    done, total = map(int, ref.notes["steered_mixes_changed"].split("/"))
    assert total > 0 and done == total
    modes = run_stage("modes", ctx(), stage_modes)
    assert (modes.status, modes.replays, modes.max_rel_err) == ("pass", 8, 0.0)


def test_stale_tables_make_the_comparison_fail() -> None:
    """A replay that reads the previous mix's tables (what a frozen graph would do) is caught."""
    c = ctx()
    model, bufs, dirs = build(SHAPE, c.device, torch.float32, seed=1, all_slots=True)
    rng = np.random.default_rng(5)

    def run(size: int, mix: Mix, ids: np.ndarray, pos: np.ndarray) -> tuple[Outputs, Outputs]:
        x, p = torch.from_numpy(ids), torch.from_numpy(pos)
        fill(bufs, SHAPE, dirs, mix)
        want = collect(model(x, p), bufs, mix)
        other = random_mix(rng, SHAPE, size)
        while not other.steered:
            other = random_mix(rng, SHAPE, size)
        fill(bufs, SHAPE, dirs, other)
        return collect(model(x, p), bufs, mix), want

    st = Stage("reference")
    with torch.no_grad():
        _loop(st, c, run)
    assert st.status == "fail" and st.max_rel_err > 1e-3


def test_a_failing_stage_is_recorded_and_the_others_still_run() -> None:
    def boom(st: Stage, c: Ctx) -> None:
        raise RuntimeError("capture failed")

    st = run_stage("graph_fp32", ctx(), boom)
    assert st.status == "fail" and st.reason == "RuntimeError: capture failed" and "traceback" in st.notes
    assert run_stage("graph_bf16", ctx(), boom, skip="no GPU").status == "skipped"


def test_the_check_imports_neither_vllm_nor_the_worker_runtime() -> None:
    code = ("import sys, bench.gpu_check; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('vllm', 'zmq', 'msgspec', 'pydantic', 'safetensors', 'transformers') or m == 'steering.vllm.runtime');"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
