"""What the steering code needs to know about a model, and a cheap fingerprint of its weights."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.errors import ModelError

_SAMPLES = 16
_SAMPLE_BYTES = 1 << 16


@dataclass(frozen=True)
class ModelInfo:
    name: str
    hidden_size: int
    num_layers: int
    architecture: str = ""
    fingerprint: str = ""  # empty: unknown, fingerprint checks are skipped
    num_heads: int = 0  # attention heads (0: unknown; the attn_heads steering site needs them)
    head_dim: int = 0

    @classmethod
    def from_hf_config(cls, name: str, cfg: Any, fingerprint: str = "") -> ModelInfo:
        text_cfg = getattr(cfg, "text_config", None) or cfg
        archs = getattr(cfg, "architectures", None) or [""]
        return cls(
            name=name,
            hidden_size=int(text_cfg.hidden_size),
            num_layers=int(text_cfg.num_hidden_layers),
            architecture=str(archs[0]),
            fingerprint=fingerprint,
            **_heads(vars(text_cfg) if hasattr(text_cfg, "__dict__") else {}),
        )


def _heads(cfg: dict[str, Any]) -> dict[str, int]:
    """``num_heads`` and ``head_dim`` of an HF text config (``head_dim`` defaults to
    ``hidden_size / num_attention_heads``, as HF's attention modules do)."""
    heads = int(cfg.get("num_attention_heads") or 0)
    if not heads:
        return {}
    dim = cfg.get("head_dim") or int(cfg["hidden_size"]) // heads
    return {"num_heads": heads, "head_dim": int(dim)}


def fingerprint_folder(folder: str | Path) -> str:
    """Identity of the weights in an HF folder, without reading them all.

    Hashes every ``*.safetensors`` header (tensor names, dtypes, shapes, offsets) and 16 evenly
    spaced 64 KiB samples of each file's data, so different fine-tunes of one architecture differ.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no *.safetensors weights to fingerprint")
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        with f.open("rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            h.update(fh.read(hlen))
            data_start = 8 + hlen
            span = max(1, size - data_start - _SAMPLE_BYTES)
            for i in range(_SAMPLES):
                fh.seek(data_start + span * i // _SAMPLES)
                h.update(fh.read(_SAMPLE_BYTES))
    return "sha256:" + h.hexdigest()


def describe(folder: str | Path, name: str | None = None) -> ModelInfo:
    """:class:`ModelInfo` of a local HF folder (config.json + weight fingerprint)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{folder}: no config.json")
    raw = json.loads(cfg_path.read_text())
    text = raw.get("text_config", raw)
    try:
        hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    except KeyError as e:
        raise ModelError(f"{cfg_path}: missing {e.args[0]}") from e
    return ModelInfo(
        name=name or folder.name,
        hidden_size=hidden,
        num_layers=layers,
        architecture=str((raw.get("architectures") or [""])[0]),
        fingerprint=fingerprint_folder(folder),
        **_heads(text),
    )
