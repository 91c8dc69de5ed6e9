"""A tiny llama-like decoder stack carrying truthsteer's in-graph ops, for ``bench.gpu_check``.

Torch only (no vLLM): the layers follow vLLM's Llama layout (each decoder layer takes
``(positions, hidden, residual)`` and returns ``(hidden, residual)`` whose sum is the residual
stream; fused add-and-RMSNorm; causal attention, here over the whole flattened step as a stand-in
for paged attention, so padding rows after the real tokens never change them; SwiGLU MLP).

:func:`install` gives the layers exactly the buffers and hooks that the worker runtime gives vLLM's
layers (``steering/vllm/runtime.py``, ``probe_readout.py``, ``stash.py``): the same attribute
names, the same hooks from :mod:`steering.vllm.custom_op`, in the same order (steer, probe, stash),
all buffers at fixed addresses so that in-place refreshes between steps reach CUDA-graph replays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from steering.vllm.custom_op import (
    ALL_SLOTS_ATTR,
    probe_hook,
    stash_hook,
    stash_pre_hook,
    steer_hook,
)


@dataclass(frozen=True)
class StackShape:
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    intermediate: int = 128
    vocab: int = 128
    slots: int = 3  # max_ops_per_layer
    directions: int = 3  # table rows besides the zero row
    probe_layers: tuple[int, ...] = (1, 2)
    probes_per_layer: int = 2
    max_tokens: int = 64
    max_reqs: int = 16


class RMSNorm(nn.Module):
    """vLLM's fused add-and-norm: ``(norm(x + residual), x + residual)``; no residual: ``(norm(x), x)``."""

    def __init__(self, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            x = x + residual
        residual = x
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight, residual


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.o = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h = x.shape
        q, k, v = self.qkv(x).view(t, 3, self.heads, h // self.heads).permute(1, 2, 0, 3).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: torch.Tensor = self.o(y.transpose(0, 1).reshape(t, h))
        return out


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)
        out: torch.Tensor = self.down(F.silu(g) * u)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.input_norm = RMSNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.post_norm = RMSNorm(hidden)
        self.mlp = MLP(hidden, intermediate)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_norm(hidden, residual)
        hidden = self.attn(hidden)
        hidden, residual = self.post_norm(hidden, residual)
        return self.mlp(hidden), residual


class TinyLlama(nn.Module):
    def __init__(self, shape: StackShape) -> None:
        super().__init__()
        self.embed = nn.Embedding(shape.vocab, shape.hidden)
        self.layers = nn.ModuleList(
            [DecoderLayer(shape.hidden, shape.heads, shape.intermediate) for _ in range(shape.layers)]
        )
        self.norm = RMSNorm(shape.hidden)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.embed(input_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        out: torch.Tensor = self.norm(hidden, residual)[0]
        return out


@dataclass(frozen=True)
class Directions:
    """Unit vectors ``[L, D, H]`` and natural norms ``[L, D]``; folded probes per probe layer."""

    units: torch.Tensor
    norms: torch.Tensor
    probe_w: dict[int, torch.Tensor]  # layer -> [P, H] float32
    probe_b: dict[int, torch.Tensor]  # layer -> [P] float32


def random_directions(shape: StackShape, seed: int) -> Directions:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape.layers, shape.directions, shape.hidden, generator=g)
    norms = v.norm(dim=-1)
    pw = {k: torch.randn(shape.probes_per_layer, shape.hidden, generator=g) / shape.hidden**0.5
          for k in shape.probe_layers}
    pb = {k: torch.randn(shape.probes_per_layer, generator=g) for k in shape.probe_layers}
    return Directions(v / norms[..., None], norms, pw, pb)


@dataclass
class Buffers:
    """Handles to the fixed-address tensors registered on the layers (one entry per layer)."""

    idx: list[torch.Tensor]  # [K, max_tokens] int64
    coef: list[torch.Tensor]  # [K, 3, max_tokens] float32
    active: list[torch.Tensor]  # [1] int32 (CPU unless ``active_device``)
    pout: dict[int, torch.Tensor]  # probe layer -> [max_tokens, P] float32
    pactive: dict[int, torch.Tensor]
    srows: torch.Tensor  # [max_reqs] int64, shared by every stash
    sout: dict[int, torch.Tensor]  # premature layer k -> [max_reqs, H]
    sactive: dict[int, torch.Tensor]
    handles: list[torch.utils.hooks.RemovableHandle]


def install(model: TinyLlama, shape: StackShape, dirs: Directions, all_slots: bool,
            active_device: torch.device | None = None) -> Buffers:
    """Register the runtime's buffers and hooks on ``model`` (already on its device and dtype).

    ``active_device``: where the 1-element ``active`` flags live (default CPU, as in the runtime;
    inductor's own CUDA-graph trees refuse CPU inputs, so that stage puts them on the GPU: in
    all-slots mode the ops never read them).
    """
    p = next(model.parameters())
    dev, dtype = p.device, p.dtype
    flag_dev = active_device or torch.device("cpu")
    bufs = Buffers([], [], [], {}, {}, torch.zeros(shape.max_reqs, dtype=torch.int64, device=dev), {}, {}, [])
    layers = model.layers
    for i, layer in enumerate(layers):
        setattr(layer, ALL_SLOTS_ATTR, all_slots)
        table = torch.cat([torch.zeros(1, shape.hidden), dirs.units[i]]).to(dev, dtype)
        idx = torch.zeros(shape.slots, shape.max_tokens, dtype=torch.int64, device=dev)
        coef = torch.zeros(shape.slots, 3, shape.max_tokens, dtype=torch.float32, device=dev)
        active = torch.zeros(1, dtype=torch.int32, device=flag_dev)
        for name, t in (("table", table), ("idx", idx), ("coef", coef), ("active", active)):
            layer.register_buffer(f"_ts_{name}", t, persistent=False)
        bufs.handles.append(layer.register_forward_hook(steer_hook))
        bufs.idx.append(idx)
        bufs.coef.append(coef)
        bufs.active.append(active)
    for k in shape.probe_layers:
        out = torch.zeros(shape.max_tokens, shape.probes_per_layer, dtype=torch.float32, device=dev)
        act = torch.zeros(1, dtype=torch.int32, device=flag_dev)
        named = (("pw", dirs.probe_w[k].to(dev)), ("pb", dirs.probe_b[k].to(dev)), ("pout", out), ("pactive", act))
        for name, t in named:
            layers[k].register_buffer(f"_ts_{name}", t, persistent=False)
        bufs.handles.append(layers[k].register_forward_hook(probe_hook))
        bufs.pout[k], bufs.pactive[k] = out, act
    for k in range(shape.layers):  # premature layer k: input of layer 0 (k = 0) or output of layer k - 1
        module = layers[0] if k == 0 else layers[k - 1]
        out = torch.zeros(shape.max_reqs, shape.hidden, dtype=dtype, device=dev)
        act = torch.zeros(1, dtype=torch.int32, device=flag_dev)
        suffix = "0" if k == 0 else ""
        module.register_buffer("_ts_srows", bufs.srows, persistent=False)
        module.register_buffer(f"_ts_sout{suffix}", out, persistent=False)
        module.register_buffer(f"_ts_sactive{suffix}", act, persistent=False)
        hook = module.register_forward_pre_hook(stash_pre_hook) if k == 0 else module.register_forward_hook(stash_hook)
        bufs.handles.append(hook)
        bufs.sout[k], bufs.sactive[k] = out, act
    return bufs


def build(shape: StackShape, device: torch.device, dtype: torch.dtype, seed: int, all_slots: bool,
          active_device: torch.device | None = None) -> tuple[TinyLlama, Buffers, Directions]:
    """A seeded model with the ops installed (same seed: same weights and directions)."""
    torch.manual_seed(seed)
    with torch.device(device):  # built and initialised on the device (the benchmark's layers are large)
        model = TinyLlama(shape)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5)
    model = model.to(dtype=dtype).eval()
    dirs = random_directions(shape, seed + 1)
    return model, install(model, shape, dirs, all_slots, active_device), dirs


def capture(fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Warm ``fn`` up on a side stream, then capture it in a CUDA graph; returns the graph and
    its static output (overwritten by every replay)."""
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
