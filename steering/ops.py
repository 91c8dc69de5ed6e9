"""Steering operators: small pure tensor functions shared by every engine and by the tests.

All three operators move the residual stream ``x`` along a direction ``u`` (unit vector):

* ``add``:    ``x + s * v``                      (``v`` at its natural scale)
* ``ablate``: ``x - s * (x.u) u``                (``s = 1`` removes the component entirely)
* ``clamp``:  ``x + s * (t - x.u) u``            (``s = 1`` sets the projection to ``t``)

They share one form, ``delta = s * (b - a * (x.u)) * u``, with ``(a, b)`` = ``(0, |v|)`` for add,
``(1, 0)`` for ablate and ``(1, t)`` for clamp. :func:`apply_slots` evaluates that form for a
whole flattened batch at once from per-token tables, which is what the in-graph vLLM operator runs;
``strength 0`` and the zero vector are exact no-ops.
"""

from __future__ import annotations

import torch

ADD, ABLATE, CLAMP = "add", "ablate", "clamp"
OPS = (ADD, ABLATE, CLAMP)


def add(x: torch.Tensor, vector: torch.Tensor, strength: float) -> torch.Tensor:
    return x + strength * vector.to(x.dtype)


def projection(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``x . u`` over the last dimension."""
    return (x * unit.to(x.dtype)).sum(-1)


def ablate(x: torch.Tensor, unit: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    u = unit.to(x.dtype)
    return x - strength * projection(x, u).unsqueeze(-1) * u


def clamp(x: torch.Tensor, unit: torch.Tensor, target: float, strength: float = 1.0) -> torch.Tensor:
    u = unit.to(x.dtype)
    return x + strength * (target - projection(x, u)).unsqueeze(-1) * u


def coefficients(op: str, norm: float, target: float | None = None) -> tuple[float, float]:
    """The ``(a, b)`` of ``delta = s * (b - a * x.u) * u`` for one operator."""
    if op == ADD:
        return 0.0, norm
    if op == ABLATE:
        return 1.0, 0.0
    if op == CLAMP:
        if target is None:
            raise ValueError("clamp needs a target projection")
        return 1.0, target
    raise ValueError(f"unknown op {op!r}")


def apply_slots(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    table: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    num_slots: int,
) -> torch.Tensor:
    """Apply up to ``num_slots`` operators per token, in slot order, to a flattened batch.

    ``hidden`` (and ``residual``, when the engine keeps the residual stream split in two: the
    stream is ``hidden + residual``) are ``[T, H]``. ``table`` is ``[R, H]`` unit vectors with row
    0 all zeros; ``idx`` is ``[K, >=T]`` rows of ``table`` per slot and token; ``coef`` is
    ``[K, 3, >=T]`` holding ``(a, b, s)`` per slot and token. The delta is added to ``hidden``;
    projections are taken on the full stream, in float32. Returns a new tensor.
    """
    n = hidden.shape[0]
    if num_slots == 0:
        return hidden.clone()
    out = hidden.to(torch.float32)
    stream = out if residual is None else out + residual.to(torch.float32)
    for k in range(num_slots):
        u = table.index_select(0, idx[k, :n]).to(torch.float32)
        a, b, s = coef[k, 0, :n], coef[k, 1, :n], coef[k, 2, :n]
        scale = s * (b - a * (stream * u).sum(-1))
        delta = scale.unsqueeze(-1) * u
        out = out + delta
        stream = stream + delta
    return out.to(hidden.dtype)
