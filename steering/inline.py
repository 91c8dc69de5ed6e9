"""Inline steering vectors: a steering op that carries its own vector instead of naming a bundle.

A request may write ``"vector"`` in place of ``"direction"``: one vector (a list of floats, or
base64 of little-endian float32 / float16 bytes, ``"vector_dtype"``) applied at every layer of
``layers``, or a mapping ``{"layer": vector}`` (``layers`` then defaults to its keys).

:class:`InlineVectors` collects the inline vectors of one request while
:func:`steering.spec.resolve` checks it: each becomes an in-memory
:class:`~steering.bundle.DirectionBundle` (so the ops on it resolve exactly like a named
direction's) keyed by a content digest of its float32 bytes. The digest is what the resolved op
carries (``vector: "inline:<digest>"``), so it enters the KV-cache salt: two requests share cache
blocks only when their vectors are byte-identical. :meth:`InlineVectors.payload` is the float32
data that travels to the worker in the request's ``extra_args``; nothing is kept after the request.

With ``"site": "attn_heads"`` a vector is a head vector (``num_heads * head_dim`` values per layer,
head ``h`` at ``h * head_dim ..``; zeros for heads left alone): its bundle carries head vectors, its
digest is salted with the site, and its payload entry says ``"site": "attn_heads"``.

Invariants: every accepted vector has the site's width (the model's hidden size, or heads x head
size), finite values and a norm at most ``max_norm`` per layer; at most ``max_vectors`` distinct
vectors per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steering.bundle import BundleMetadata, DirectionBundle, LayerStats, ModelRef, Training
from steering.errors import SpecError
from steering.heads import RESIDUAL, HeadMeta
from steering.model_info import ModelInfo

INLINE_PREFIX = "inline:"
INLINE_NAME = "inline"
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


@dataclass(frozen=True)
class InlineLimits:
    max_vectors: int = 4  # distinct inline vectors per request
    max_norm: float = 1e4  # per-layer L2 norm cap


def digest(vectors: Mapping[int, np.ndarray], site: str = RESIDUAL) -> str:
    """sha256 over the layers and float32 bytes, in layer order (32 hex characters); other sites
    than the residual stream salt it with their name."""
    h = hashlib.sha256()
    if site != RESIDUAL:
        h.update(f"{site}|".encode())
    for layer in sorted(vectors):
        h.update(f"{layer}:".encode())
        h.update(np.ascontiguousarray(vectors[layer], dtype="<f4").tobytes())
    return h.hexdigest()[:32]


def decode_vector(raw: Any, dtype: str, hidden_size: int, param: str, what: str = "the model's hidden size") -> np.ndarray:
    """One vector from a list of numbers or a base64 string; checks size and finiteness."""
    if isinstance(raw, str):
        try:
            buf = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SpecError(f"not valid base64 ({e})", param) from e
        item = DTYPES[dtype].itemsize
        if len(buf) != hidden_size * item:
            raise SpecError(f"{len(buf)} bytes; a {dtype} vector of {what} {hidden_size} "
                            f"has {hidden_size * item}", param)
        arr = np.frombuffer(buf, dtype=DTYPES[dtype]).astype(np.float32)
    elif isinstance(raw, list):
        if len(raw) != hidden_size:
            raise SpecError(f"{len(raw)} values, {what} is {hidden_size}", param)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
            raise SpecError("values must be numbers", param)
        arr = np.asarray(raw, dtype=np.float64).astype(np.float32)
    else:
        raise SpecError("a vector is a list of numbers or a base64 string", param)
    if not np.isfinite(arr).all():
        raise SpecError("contains NaN or inf", param)
    out: np.ndarray = arr
    return out


@dataclass
class InlineVectors:
    """The inline vectors of one request, filled by :func:`steering.spec.resolve`."""

    model: ModelInfo
    limits: InlineLimits = InlineLimits()
    bundles: dict[str, DirectionBundle] = field(default_factory=dict)  # digest -> bundle
    heads: bool = False  # accept attn_heads vectors (the worker has head tables: a head bundle is loaded)

    def add(self, raw: Any, dtype: str, layers: list[int] | None, param: str,
            site: str = RESIDUAL) -> tuple[DirectionBundle, str]:
        """Decode and check one op's ``vector``; returns its bundle and wire reference."""
        width = self.model.hidden_size if site == RESIDUAL else self.model.num_heads * self.model.head_dim
        if site != RESIDUAL and not (self.heads and width):
            raise SpecError("inline attn_heads vectors need a server started with a bundle that has head vectors "
                            "(its o_proj tables)", param.removesuffix(".vector") + ".site")
        what = "the model's hidden size" if site == RESIDUAL else "the model's heads x head size"
        vectors = self._decode(raw, dtype, layers, param, width, what)
        for layer, v in vectors.items():
            norm = float(np.linalg.norm(v.astype(np.float64)))
            if not math.isfinite(norm) or norm > self.limits.max_norm:
                raise SpecError(f"norm {norm:.4g} at layer {layer} exceeds the cap {self.limits.max_norm:g}", param)
        key = digest(vectors, site)
        if key not in self.bundles:
            if len(self.bundles) >= self.limits.max_vectors:
                raise SpecError(f"at most {self.limits.max_vectors} inline vectors per request", param)
            self.bundles[key] = self._bundle(key, vectors) if site == RESIDUAL else self._head_bundle(key, vectors)
        return self.bundles[key], INLINE_PREFIX + key

    def _decode(self, raw: Any, dtype: str, layers: list[int] | None, param: str, hs: int,
                what: str) -> dict[int, np.ndarray]:
        nl = self.model.num_layers
        if isinstance(raw, dict):
            out: dict[int, np.ndarray] = {}
            for k, v in raw.items():
                try:
                    layer = int(k)
                except ValueError as e:
                    raise SpecError(f"key {k!r} is not a layer number", param) from e
                if not 0 <= layer < nl:
                    raise SpecError(f"layer {layer} outside the model's [0, {nl})", f"{param}.{k}")
                out[layer] = decode_vector(v, dtype, hs, f"{param}.{k}", what)
            if not out:
                raise SpecError("the layer mapping is empty", param)
            return out
        if not layers:
            raise SpecError("a single inline vector needs the op's layers", param.rsplit(".", 1)[0] + ".layers")
        bad = [x for x in layers if not 0 <= x < nl]
        if bad:
            raise SpecError(f"layers {bad} outside the model's [0, {nl})", param.rsplit(".", 1)[0] + ".layers")
        vec = decode_vector(raw, dtype, hs, param, what)
        return {layer: vec for layer in layers}

    def _bundle(self, key: str, vectors: dict[int, np.ndarray]) -> DirectionBundle:
        tensors = {k: torch.from_numpy(v.copy()) for k, v in vectors.items()}
        layers = sorted(tensors)
        meta = BundleMetadata(
            name=INLINE_NAME, kind="custom", description=f"inline vector {key}", model=ModelRef.of(self.model),
            layers=layers, recommended_layers=layers, recommended_strength=1.0,
            layer_stats={str(k): LayerStats(norm=float(torch.linalg.vector_norm(t))) for k, t in tensors.items()},
            training=Training(method="inline"),
        )
        return DirectionBundle(meta=meta, vectors=tensors, source=f"<inline {key}>")

    def _head_bundle(self, key: str, vectors: dict[int, np.ndarray]) -> DirectionBundle:
        nh, hd = self.model.num_heads, self.model.head_dim
        tensors = {k: torch.from_numpy(v.copy()).reshape(nh, hd) for k, v in vectors.items()}
        selected = [(k, h) for k, t in sorted(tensors.items()) for h in range(nh) if bool(t[h].ne(0).any())]
        meta = BundleMetadata(
            name=INLINE_NAME, kind="custom", description=f"inline head vector {key}", model=ModelRef.of(self.model),
            layers=[], recommended_layers=[], recommended_strength=1.0, training=Training(method="inline"),
            heads=HeadMeta(num_heads=nh, head_dim=hd, layers=sorted(tensors), selected=selected),
        )
        return DirectionBundle(meta=meta, vectors={}, source=f"<inline {key}>", head_vectors=tensors)

    def payload(self) -> dict[str, dict[str, Any]]:
        """What travels to the worker: digest -> ``{"layers": [...], "data": float32 bytes [L, width]}``
        (plus ``"site": "attn_heads"`` for head vectors, ``[L, num_heads * head_dim]``)."""
        out: dict[str, dict[str, Any]] = {}
        for key, b in self.bundles.items():
            vecs = {k: v.reshape(-1) for k, v in b.head_vectors.items()} if b.meta.heads else b.vectors
            layers = sorted(vecs)
            data = torch.stack([vecs[k] for k in layers]).to(torch.float32).numpy().astype("<f4").tobytes()
            out[key] = {"layers": layers, "data": data, **({"site": "attn_heads"} if b.meta.heads else {})}
        return out


def unpack(entry: Mapping[str, Any], hidden_size: int) -> dict[int, np.ndarray]:
    """Worker side of :meth:`InlineVectors.payload` (raises ValueError/KeyError/TypeError on junk)."""
    layers = [int(x) for x in entry["layers"]]
    data = entry["data"]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("inline vector data must be bytes")
    arr = np.frombuffer(bytes(data), dtype="<f4")
    if arr.size != len(layers) * hidden_size:
        raise ValueError(f"inline vector data has {arr.size} values for {len(layers)} layers of {hidden_size}")
    rows = arr.reshape(len(layers), hidden_size)
    if not np.isfinite(rows).all():
        raise ValueError("inline vector data is not finite")
    return {layer: rows[i].copy() for i, layer in enumerate(layers)}
