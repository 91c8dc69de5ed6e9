"""Random request mixes for ``bench.gpu_check``: filling the op tables, and a plain-code reference.

A :class:`Mix` is one engine step: requests in batch order, each with its scheduled tokens (a
prefill chunk or one decode token), its steering entries (op, direction row, strength, target,
positions), whether it reads probes and which premature layers it stashes. :func:`fill` writes the
tables the way the worker runtime does (``steering/vllm/runtime.py``: one slot per entry per layer
in entry order; ``stash.py``: every batch row points at its last token, rows past the batch at
token 0; the ``active`` flags) into the fixed buffers of :mod:`bench.gpu_stack`.
:func:`reference` recomputes the step from the same weights with the operators applied by plain
code (:mod:`steering.ops`) per request, hooks bypassed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.gpu_stack import Buffers, Directions, StackShape, TinyLlama
from steering import ops

POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class Entry:
    layer: int
    row: int  # table row (1 .. directions)
    op: str
    strength: float
    target: float
    positions: str


@dataclass(frozen=True)
class Request:
    n_prompt: int
    n_computed: int
    n_sched: int
    entries: tuple[Entry, ...]
    probes: bool
    stash_layers: tuple[int, ...]


@dataclass(frozen=True)
class Mix:
    requests: tuple[Request, ...]

    @property
    def tokens(self) -> int:
        return sum(r.n_sched for r in self.requests)

    @property
    def steered(self) -> bool:
        """Some entry with a non-zero strength covers at least one of its request's tokens."""
        return any(
            e.strength != 0 and _covers(r, s, t, e.positions)
            for r, (s, t) in zip(self.requests, self.spans(), strict=True)
            for e in r.entries
        )

    @property
    def probe_on(self) -> bool:
        return any(r.probes for r in self.requests)

    @property
    def stash_on(self) -> set[int]:
        return {k for r in self.requests for k in r.stash_layers}

    def spans(self) -> list[tuple[int, int]]:
        out, s = [], 0
        for r in self.requests:
            out.append((s, s + r.n_sched))
            s += r.n_sched
        return out


def _entries(rng: np.random.Generator, shape: StackShape) -> tuple[Entry, ...]:
    used: dict[int, int] = {}
    out = []
    for _ in range(int(rng.integers(1, 2 * shape.slots + 1))):
        layer = int(rng.integers(shape.layers))
        if used.get(layer, 0) >= shape.slots:
            continue
        used[layer] = used.get(layer, 0) + 1
        strength = 0.0 if rng.random() < 0.1 else float(rng.choice((-1, 1)) * rng.uniform(0.5, 4))
        out.append(Entry(layer, int(rng.integers(1, shape.directions + 1)), str(rng.choice(ops.OPS)), strength,
                         float(rng.uniform(-2, 2)), str(rng.choice(POSITIONS))))
    return tuple(out)


def random_mix(rng: np.random.Generator, shape: StackShape, max_tokens: int) -> Mix:
    """Up to ``max_tokens`` tokens and ``shape.max_reqs`` requests: decodes and prefill chunks,
    about half steered, half reading probes, half stashing premature layers."""
    budget = int(rng.integers(1, max_tokens + 1))
    reqs: list[Request] = []
    while budget > 0 and len(reqs) < shape.max_reqs:
        n_prompt = int(rng.integers(1, 40))
        if rng.random() < 0.5:  # decode
            n_computed, n_sched = n_prompt + int(rng.integers(0, 20)), 1
        else:  # prefill chunk (may run into generated tokens being recomputed)
            n_computed = int(rng.integers(0, n_prompt))
            n_sched = int(rng.integers(1, min(budget, 24) + 1))
        n_sched = min(n_sched, budget)
        budget -= n_sched
        entries = _entries(rng, shape) if rng.random() < 0.6 else ()
        stash = tuple(sorted({int(k) for k in rng.integers(0, shape.layers, size=2)})) if rng.random() < 0.5 else ()
        reqs.append(Request(n_prompt, n_computed, n_sched, entries, bool(rng.random() < 0.5), stash))
    return Mix(tuple(reqs))


def _range(req: Request, s: int, e: int, positions: str) -> tuple[int, int]:
    split = s + min(max(req.n_prompt - req.n_computed, 0), e - s)
    return {"all": (s, e), "prompt": (s, split), "generated": (split, e)}[positions]


def _covers(req: Request, s: int, e: int, positions: str) -> bool:
    lo, hi = _range(req, s, e, positions)
    return hi > lo


def fill(bufs: Buffers, shape: StackShape, dirs: Directions, mix: Mix) -> None:
    """Write the step's tables into the fixed buffers (whole buffers, so rows past the step are 0)."""
    idx = np.zeros((shape.layers, shape.slots, shape.max_tokens), dtype=np.int64)
    coef = np.zeros((shape.layers, shape.slots, 3, shape.max_tokens), dtype=np.float32)
    active = np.zeros(shape.layers, dtype=np.int32)
    for req, (s, e) in zip(mix.requests, mix.spans(), strict=True):
        slot: dict[int, int] = {}
        for ent in req.entries:
            k = slot.get(ent.layer, 0)
            slot[ent.layer] = k + 1
            lo, hi = _range(req, s, e, ent.positions)
            if hi <= lo:
                continue
            a, b = ops.coefficients(ent.op, float(dirs.norms[ent.layer, ent.row - 1]), ent.target)
            idx[ent.layer, k, lo:hi] = ent.row
            coef[ent.layer, k, :, lo:hi] = np.array((a, b, ent.strength), dtype=np.float32)[:, None]
            active[ent.layer] = max(active[ent.layer], k + 1)
    for i in range(shape.layers):
        bufs.idx[i].copy_(torch.from_numpy(idx[i]))
        bufs.coef[i].copy_(torch.from_numpy(coef[i]))
        bufs.active[i].fill_(int(active[i]))
    for pa in bufs.pactive.values():
        pa.fill_(int(mix.probe_on))
    rows = np.zeros(shape.max_reqs, dtype=np.int64)
    rows[: len(mix.requests)] = [e - 1 for _, e in mix.spans()]
    bufs.srows.copy_(torch.from_numpy(rows))
    on = mix.stash_on
    for k, sa in bufs.sactive.items():
        sa.fill_(len(mix.requests) if k in on else 0)


def inputs(rng: np.random.Generator, shape: StackShape, mix: Mix, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and positions padded to ``size`` (padding: id 0, position 0)."""
    ids = np.zeros(size, dtype=np.int64)
    pos = np.zeros(size, dtype=np.int64)
    ids[: mix.tokens] = rng.integers(0, shape.vocab, size=mix.tokens)
    for req, (s, e) in zip(mix.requests, mix.spans(), strict=True):
        pos[s:e] = req.n_computed + np.arange(e - s)
    return ids, pos


@dataclass(frozen=True)
class Outputs:
    final: torch.Tensor  # [tokens, H]
    probe: dict[int, torch.Tensor]  # probe layer -> [tokens, P] logits
    stash: dict[int, torch.Tensor]  # premature layer -> [requests, H]


def collect(final: torch.Tensor, bufs: Buffers, mix: Mix) -> Outputs:
    """Copies of what the step produced that the runtime would read (valid rows only)."""
    n, r = mix.tokens, len(mix.requests)
    probe = {k: o[:n].float().clone() for k, o in bufs.pout.items()} if mix.probe_on else {}
    stash = {k: bufs.sout[k][:r].float().clone() for k in sorted(mix.stash_on)}
    return Outputs(final[:n].float().clone(), probe, stash)


def max_rel_err(got: Outputs, want: Outputs) -> float:
    """Largest ``max|got - want| / max|want|`` over the final stream, probe logits and stashes."""
    pairs = [(got.final, want.final)]
    pairs += [(got.probe[k], want.probe[k]) for k in want.probe]
    pairs += [(got.stash[k], want.stash[k]) for k in want.stash]
    err = 0.0
    for a, b in pairs:
        scale = float(b.abs().max().clamp_min(1e-6))
        err = max(err, float((a - b).abs().max()) / scale)
    return err


def _steer(hidden: torch.Tensor, residual: torch.Tensor, dirs: Directions, mix: Mix, layer: int) -> torch.Tensor:
    hidden = hidden.clone()
    for req, (s, e) in zip(mix.requests, mix.spans(), strict=True):
        for ent in req.entries:
            lo, hi = _range(req, s, e, ent.positions)
            if ent.layer != layer or hi <= lo:
                continue
            stream = hidden[lo:hi] + residual[lo:hi]
            unit = dirs.units[layer, ent.row - 1].to(stream)
            if ent.op == ops.ADD:
                new = ops.add(stream, unit * dirs.norms[layer, ent.row - 1].to(stream), ent.strength)
            elif ent.op == ops.ABLATE:
                new = ops.ablate(stream, unit, ent.strength)
            else:
                new = ops.clamp(stream, unit, ent.target, ent.strength)
            hidden[lo:hi] = hidden[lo:hi] + (new - stream)
    return hidden


def reference(model: TinyLlama, dirs: Directions, mix: Mix, ids: torch.Tensor, pos: torch.Tensor) -> Outputs:
    """The step by plain code: ``layer.forward`` (hooks bypassed) and :mod:`steering.ops` per request."""
    last = torch.tensor([e - 1 for _, e in mix.spans()], device=ids.device)
    hidden: torch.Tensor = model.embed(ids)
    stash = {0: hidden[last].float()}
    probe: dict[int, torch.Tensor] = {}
    residual: torch.Tensor | None = None
    for i, layer in enumerate(model.layers):
        hidden, residual = layer.forward(pos, hidden, residual)
        hidden = _steer(hidden, residual, dirs, mix, i)
        stream = (hidden + residual).float()
        if i in dirs.probe_w:
            probe[i] = stream @ dirs.probe_w[i].to(stream).t() + dirs.probe_b[i].to(stream)
        if i + 1 < len(model.layers):
            stash[i + 1] = stream[last]
    final, _ = model.norm(hidden, residual)
    n = mix.tokens
    return Outputs(final[:n].float(), {k: v[:n] for k, v in probe.items()} if mix.probe_on else {},
                   {k: stash[k] for k in sorted(mix.stash_on)})
