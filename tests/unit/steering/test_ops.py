from __future__ import annotations

import torch

from steering import ops


def _x(seed: int = 0, shape: tuple[int, ...] = (5, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_add_is_exact() -> None:
    x, v = _x(0), _x(1, (8,))
    assert torch.equal(ops.add(x, v, 3.0), x + 3.0 * v)
    assert torch.equal(ops.add(x, v, 0.0), x)


def test_ablate_removes_projection_and_keeps_orthogonal_part() -> None:
    x, v = _x(0), _x(1, (8,))
    u = v / v.norm()
    y = ops.ablate(x, u)
    assert torch.allclose(ops.projection(y, u), torch.zeros(5), atol=1e-6)
    assert torch.allclose(y - x, -ops.projection(x, u)[:, None] * u, atol=1e-6)
    assert torch.equal(ops.ablate(x, u, 0.0), x)


def test_clamp_sets_projection() -> None:
    x, v = _x(0), _x(1, (8,))
    u = v / v.norm()
    y = ops.clamp(x, u, target=2.5)
    assert torch.allclose(ops.projection(y, u), torch.full((5,), 2.5), atol=1e-5)
    half = ops.clamp(x, u, target=2.5, strength=0.5)
    assert torch.allclose(ops.projection(half, u), (ops.projection(x, u) + 2.5) / 2, atol=1e-5)


def _tables(
    entries: list[tuple[int, int, int, float, float, float]], vecs: torch.Tensor, n: int, k: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """entries: (slot, token, row, a, b, s); vecs: unit rows 1.. of the table."""
    table = torch.cat([torch.zeros(1, vecs.shape[1]), vecs])
    idx = torch.zeros(k, n + 3, dtype=torch.int64)  # wider than the batch, like the engine buffers
    coef = torch.zeros(k, 3, n + 3)
    for slot, tok, row, a, b, s in entries:
        idx[slot, tok] = row
        coef[slot, :, tok] = torch.tensor([a, b, s])
    return table, idx, coef


def test_apply_slots_matches_operators_per_token() -> None:
    h, r = _x(0), _x(1)
    v = _x(2, (2, 8))
    u = v / v.norm(dim=1, keepdim=True)
    norm0 = float(v[0].norm())
    a_add, b_add = ops.coefficients("add", norm0)
    a_ab, b_ab = ops.coefficients("ablate", 0.0)
    a_cl, b_cl = ops.coefficients("clamp", 0.0, target=1.25)
    table, idx, coef = _tables(
        [
            (0, 1, 1, a_add, b_add, 3.0),  # token 1: add 3 * v0
            (0, 2, 2, a_ab, b_ab, 1.0),  # token 2: ablate u1
            (0, 3, 1, a_add, b_add, 2.0),  # token 3: add 2 * v0, then clamp u1 to 1.25
            (1, 3, 2, a_cl, b_cl, 1.0),
        ],
        u,
        5,
    )
    out = ops.apply_slots(h, r, table, idx, coef, 2)
    stream, out_stream = h + r, out + r
    assert torch.equal(out[0], h[0]) and torch.equal(out[4], h[4])  # untouched rows: bit-identical
    assert torch.allclose(out_stream[1], ops.add(stream[1], v[0], 3.0), atol=1e-5)
    assert torch.allclose(out_stream[2], ops.ablate(stream[2], u[1]), atol=1e-5)
    expect3 = ops.clamp(ops.add(stream[3], v[0], 2.0), u[1], 1.25)
    assert torch.allclose(out_stream[3], expect3, atol=1e-5)


def test_apply_slots_identities() -> None:
    h, r = _x(0), _x(1)
    u = torch.nn.functional.normalize(_x(2, (1, 8)), dim=1)
    # strength 0 is bit-identical
    table, idx, coef = _tables([(0, t, 1, 0.0, 5.0, 0.0) for t in range(5)], u, 5)
    assert torch.equal(ops.apply_slots(h, r, table, idx, coef, 2), h)
    # add then subtract is the identity (up to rounding)
    table, idx, coef = _tables(
        [(0, t, 1, 0.0, 5.0, 4.0) for t in range(5)] + [(1, t, 1, 0.0, 5.0, -4.0) for t in range(5)], u, 5
    )
    assert torch.allclose(ops.apply_slots(h, r, table, idx, coef, 2), h, atol=1e-5)
    # num_slots 0: a copy, never an alias
    out = ops.apply_slots(h, r, table, idx, coef, 0)
    assert torch.equal(out, h) and out.data_ptr() != h.data_ptr()


def test_apply_slots_keeps_dtype_and_leaves_bf16_rows_bit_identical() -> None:
    h, r = _x(0).bfloat16(), _x(1).bfloat16()
    u = torch.nn.functional.normalize(_x(2, (1, 8)), dim=1)
    table, idx, coef = _tables([(0, 2, 1, 0.0, 1.0, 3.0)], u, 5)
    out = ops.apply_slots(h, r, table.bfloat16(), idx, coef, 1)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[[0, 1, 3, 4]], h[[0, 1, 3, 4]])
    assert not torch.equal(out[2], h[2])
