"""Interop with llama.cpp / repeng control vectors (GGUF, ``direction.N`` tensors).

llama.cpp adds ``direction.N`` to the output of decoder layer ``N`` (0-based, ``N >= 1``: layer 0
cannot be steered there); truthsteer's layer ``k`` is also the output of decoder layer ``k``, so
indices map one to one. A control vector is a single additive vector per layer with the strength
baked in, so importing gives a bundle with ``recommended_strength`` 1 and no probe.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from steering.bundle import BundleMetadata, DirectionBundle, LayerStats, ModelRef, Training
from steering.errors import BundleError
from steering.model_info import ModelInfo

ARCH = "controlvector"
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def export_gguf(bundle: DirectionBundle, path: str | Path, strength: float = 1.0) -> Path:
    """Write ``strength * direction`` for every layer >= 1 as a llama.cpp control vector."""
    import gguf

    path = Path(path)
    layers = sorted(x for x in bundle.vectors if x >= 1)
    if not layers:
        raise BundleError(f"{bundle.source}: layers: llama.cpp control vectors cannot hold layer 0 only")
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", bundle.meta.model.architecture or bundle.meta.model.name)
    writer.add_uint32(f"{ARCH}.layer_count", len(layers))
    for layer in layers:
        data = (strength * bundle.vectors[layer]).to(torch.float32).numpy()
        writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def import_gguf(
    path: str | Path,
    model: ModelInfo,
    name: str,
    kind: str = "custom",
    recommended_layers: list[int] | None = None,
) -> DirectionBundle:
    """Read a control vector into a bundle for ``model`` (shapes checked, values finite)."""
    import gguf

    path = Path(path)
    src = str(path)
    try:
        reader = gguf.GGUFReader(src)
    except (OSError, ValueError) as e:
        raise BundleError(f"{src}: not a readable GGUF file ({e})") from e
    arch_field = reader.fields.get("general.architecture")
    if arch_field is not None:
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
        if arch != ARCH:
            raise BundleError(f"{src}: general.architecture is '{arch}', expected '{ARCH}'")
    vectors: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        m = _DIRECTION.match(t.name)
        if not m:
            raise BundleError(f"{src}: {t.name}: unknown tensor (expected direction.N)")
        layer = int(m.group(1))
        if not 0 <= layer < model.num_layers:
            raise BundleError(f"{src}: {t.name}: layer outside the model's [0, {model.num_layers})")
        vec = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
        if vec.shape[0] != model.hidden_size:
            raise BundleError(f"{src}: {t.name}: {vec.shape[0]} values, model hidden size is {model.hidden_size}")
        vectors[layer] = vec
    if not vectors:
        raise BundleError(f"{src}: no direction.N tensors")
    layers = sorted(vectors)
    meta = BundleMetadata(
        name=name,
        kind=kind,
        description=f"imported from llama.cpp control vector {path.name}",
        model=ModelRef.of(model),
        layers=layers,
        recommended_layers=recommended_layers or layers,
        recommended_strength=1.0,
        layer_stats={str(k): LayerStats(norm=float(torch.linalg.vector_norm(v))) for k, v in vectors.items()},
        training=Training(method="gguf-import", notes=src),
    )
    return DirectionBundle(meta=meta, vectors=vectors, source=src)
