"""The in-graph steering operator, registered as ``torch.ops.truthsteer.steer``.

vLLM compiles the model (torch.compile, CUDA graphs on GPU), so a Python hook added after
compilation never runs. Instead every steerable decoder layer calls this custom op on its output,
unconditionally and with fixed-shape inputs: the op is opaque to the compiler, appears in the
compiled graph, and reads per-step tables (which vector, which coefficients, per token) that the
runtime refreshes in place before each forward pass.

Two execution modes, chosen per engine at install time (``module._ts_all_slots``, a plain Python
attribute the hooks read once, at trace time):

* skip-idle (CPU default): each op reads its 1-element CPU ``active`` tensor on the host and skips
  idle slots / layers.
* all-slots (always on accelerators; selectable on CPU for tests): every op runs every slot and
  every row, and never reads a flag on the host, so a captured CUDA graph stays valid whatever the
  next step holds. Idle slots point at the zero row of the table with zero coefficients, so they
  add exactly ``+0.0``: both modes give bit-identical results.

This module imports only torch (no vLLM), so ``bench/gpu_check.py`` can run it on any CUDA machine.
"""

from __future__ import annotations

from typing import Any

import torch

from steering.ops import apply_slots

ALL_SLOTS_ATTR = "_ts_all_slots"


def run_all(hidden: torch.Tensor, all_slots: bool) -> bool:
    """Whether an op runs every slot / row (accelerators always; CPU when asked)."""
    return all_slots or hidden.device.type != "cpu"


def all_slots_of(module: torch.nn.Module) -> bool:
    return bool(getattr(module, ALL_SLOTS_ATTR, False))


@torch.library.custom_op("truthsteer::steer", mutates_args=())
def steer(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    active: torch.Tensor,
    all_slots: bool = False,
) -> torch.Tensor:
    """Return ``hidden`` plus the steering deltas of this step (see :func:`apply_slots`).

    ``active`` is a 1-element CPU tensor: how many slots any token uses at this layer this step.
    In skip-idle mode (CPU) the op reads it to skip idle slots; in all-slots mode (accelerators,
    or ``all_slots``) it runs all slots so that a captured CUDA graph stays correct whatever the
    next step holds.
    """
    num = idx.shape[0] if run_all(hidden, all_slots) else int(active.item())
    return apply_slots(hidden, residual, table, idx, coef, num)


@steer.register_fake
def _steer_fake(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    active: torch.Tensor,
    all_slots: bool = False,
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
            hidden, residual, module._ts_table, module._ts_idx, module._ts_coef, module._ts_active,
            all_slots_of(module),
        )
        return (steered, residual, *output[2:])
    zeros = torch.zeros_like(output)
    return torch.ops.truthsteer.steer(
        output, zeros, module._ts_table, module._ts_idx, module._ts_coef, module._ts_active, all_slots_of(module)
    )


@torch.library.custom_op("truthsteer::probe", mutates_args=("out",))
def probe(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    active: torch.Tensor,
    all_slots: bool = False,
) -> None:
    """Write the probe logits of every token of this step into ``out[:tokens]`` (``[max_tokens, P]``).

    ``weight`` ``[P, H]`` and ``bias`` ``[P]`` (float32) are the layer's probes with their Platt
    calibration folded in, so ``sigmoid(out)`` is the calibrated score. In skip-idle mode the op is
    skipped when no request of this step asked for scores (``active == 0``).
    """
    if not run_all(hidden, all_slots) and int(active.item()) == 0:
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
    all_slots: bool = False,
) -> None:
    return None


def probe_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    """Forward hook after ``steer_hook`` on layers that carry probes: reads the (steered) stream."""
    if isinstance(output, tuple):
        hidden, residual = output[0], output[1]
    else:
        hidden, residual = output, torch.zeros_like(output)
    torch.ops.truthsteer.probe(
        hidden, residual, module._ts_pw, module._ts_pb, module._ts_pout, module._ts_pactive, all_slots_of(module)
    )


@torch.library.custom_op("truthsteer::stash", mutates_args=("out",))
def stash(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    rows: torch.Tensor,
    out: torch.Tensor,
    active: torch.Tensor,
    all_slots: bool = False,
) -> None:
    """Copy the stream (``hidden + residual``) at token rows ``rows`` into ``out`` (``[max_reqs, H]``).

    Used by contrastive decoding to keep one premature layer's hidden state of each request's
    sampling position. ``rows[i]`` is the token row of batch row ``i``; ``active`` (1-element CPU
    int32) is how many batch rows to copy: in skip-idle mode the op copies ``active`` rows and is
    skipped when it is 0 (no request of this step reads this layer); in all-slots mode it copies
    every row so that a captured CUDA graph stays correct whatever the next step holds (the runtime
    keeps ``rows`` valid token indices).
    """
    if run_all(hidden, all_slots):
        n = rows.shape[0]
    else:
        n = int(active.item())
        if n == 0:
            return
    idx = rows[:n]
    picked = hidden.index_select(0, idx)
    if residual is not None:
        picked = picked + residual.index_select(0, idx)
    out[:n].copy_(picked)


@stash.register_fake
def _stash_fake(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    rows: torch.Tensor,
    out: torch.Tensor,
    active: torch.Tensor,
    all_slots: bool = False,
) -> None:
    return None


def stash_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    """Forward hook (after steering and probes): stash decoder layer ``k``'s output stream, i.e.
    premature layer ``k + 1``."""
    if isinstance(output, tuple):
        hidden, residual = output[0], output[1]
    else:
        hidden, residual = output, None
    torch.ops.truthsteer.stash(
        hidden, residual, module._ts_srows, module._ts_sout, module._ts_sactive, all_slots_of(module)
    )


def stash_pre_hook(module: torch.nn.Module, args: Any) -> None:
    """Forward pre-hook on decoder layer 0: stash its input stream (premature layer 0, the
    embeddings). vLLM layers take ``(positions, hidden_states, residual)``: the floating-point
    tensor arguments are the hidden states and, when present, the residual (``None`` at layer 0).
    The filter depends only on types, so it is resolved once at trace time."""
    floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    residual = floats[1] if len(floats) > 1 else None
    torch.ops.truthsteer.stash(
        floats[0], residual, module._ts_srows, module._ts_sout0, module._ts_sactive0, all_slots_of(module)
    )
