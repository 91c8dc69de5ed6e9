"""The in-graph steering operator, registered as ``torch.ops.truthsteer.steer``.

vLLM compiles the model (torch.compile, CUDA graphs on GPU), so a Python hook added after
compilation never runs. Instead every steerable decoder layer calls this custom op on its output,
unconditionally and with fixed-shape inputs: the op is opaque to the compiler, appears in the
compiled graph, and reads per-step tables (which vector, which coefficients, per token) that the
runtime refreshes in place before each forward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from steering.ops import apply_slots


@torch.library.custom_op("truthsteer::steer", mutates_args=())
def steer(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    active: torch.Tensor,
) -> torch.Tensor:
    """Return ``hidden`` plus the steering deltas of this step (see :func:`apply_slots`).

    ``active`` is a 1-element CPU tensor: how many slots any token uses at this layer this step.
    On CPU (no graph replay) the op reads it to skip idle slots; on accelerators it runs all slots
    so that a captured CUDA graph stays correct whatever the next step holds.
    """
    num = int(active.item()) if hidden.device.type == "cpu" else idx.shape[0]
    return apply_slots(hidden, residual, table, idx, coef, num)


@steer.register_fake
def _steer_fake(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    active: torch.Tensor,
) -> torch.Tensor:
    return torch.empty_like(hidden)


def steer_hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
    """Forward hook installed on each steerable decoder layer before compilation.

    vLLM layers return ``(hidden, residual)`` whose sum is the residual stream; the op adds the
    delta to ``hidden`` and projects on the sum. Layers that return the stream itself get a zero
    residual. Traced once by torch.compile: no data-dependent Python here.
    """
    if isinstance(output, tuple):
        hidden, residual = output[0], output[1]
        steered = torch.ops.truthsteer.steer(
            hidden, residual, module._ts_table, module._ts_idx, module._ts_coef, module._ts_active
        )
        return (steered, residual, *output[2:])
    zeros = torch.zeros_like(output)
    return torch.ops.truthsteer.steer(
        output, zeros, module._ts_table, module._ts_idx, module._ts_coef, module._ts_active
    )


@torch.library.custom_op("truthsteer::probe", mutates_args=("out",))
def probe(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    active: torch.Tensor,
) -> None:
    """Write the probe logits of every token of this step into ``out[:tokens]`` (``[max_tokens, P]``).

    ``weight`` ``[P, H]`` and ``bias`` ``[P]`` (float32) are the layer's probes with their Platt
    calibration folded in, so ``sigmoid(out)`` is the calibrated score. On CPU the op is skipped
    when no request of this step asked for scores (``active == 0``).
    """
    if hidden.device.type == "cpu" and int(active.item()) == 0:
        return
    n = hidden.shape[0]
    stream = hidden.float() + residual.float()
    torch.addmm(bias, stream, weight.t(), out=out[:n])


@probe.register_fake
def _probe_fake(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    active: torch.Tensor,
) -> None:
    return None


def probe_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    """Forward hook after ``steer_hook`` on layers that carry probes: reads the (steered) stream."""
    if isinstance(output, tuple):
        hidden, residual = output[0], output[1]
    else:
        hidden, residual = output, torch.zeros_like(output)
    torch.ops.truthsteer.probe(hidden, residual, module._ts_pw, module._ts_pb, module._ts_pout, module._ts_pactive)
