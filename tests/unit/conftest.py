"""Fixtures shared by the unit tests of the worker side."""

from __future__ import annotations

import pytest
import torch

from steering.vllm import custom_op


@pytest.fixture(params=["skip_idle", "all_slots"])
def ops_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test in both execution modes of the in-graph ops (``steering/vllm/custom_op.py``):
    the CPU default (host flags skip idle slots) and the accelerator mode (every slot and row every
    step, no host flag read), which every hook then uses whatever its layer says. Modules opt in
    with ``pytestmark = pytest.mark.usefixtures("ops_mode")``; their assertions must hold in both.
    Dynamo's caches are reset first: run twice, these modules' compiled tests would otherwise pass
    its recompile limit for the toy model's ``forward`` within one process."""
    torch._dynamo.reset()
    if request.param == "all_slots":
        monkeypatch.setattr(custom_op, "all_slots_of", lambda module: True)
    return str(request.param)
