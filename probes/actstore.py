"""A per-text activation cache: any subset, order or split of texts reuses earlier extractions.

:func:`probes.extract.cached_activations` caches one file per (model, dataset digest): a new
subsample or split re-extracts everything. Recipe searches slice the same statements many ways,
so this store keys each text's ``[layers, hidden]`` activations by a hash of the text itself, in
shard files (safetensors, one tensor per text) under
``<cache>/activations/<model key>/``. Each :meth:`ActivationStore.activations` call extracts only
the texts not stored yet, in chunks, writing a shard after each chunk, so an interrupted run
resumes where it stopped.

Invariant: a stored row is the activation of exactly that text (the key is its sha256) under the
model key, which names the model fingerprint and the extraction dtype.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from probes.extract import last_token_activations
from steering.models import cache_dir


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def model_key(fingerprint: str, dtype: torch.dtype) -> str:
    return f"{fingerprint.replace(':', '-')[:40]}-{str(dtype).removeprefix('torch.')}"


class ActivationStore:
    """Per-text activations of one model (and dtype), on disk."""

    def __init__(self, key: str, root: Path | None = None, chunk: int = 256,
                 extract: Callable[..., torch.Tensor] | None = None) -> None:
        """``extract``: the extractor of missing rows (default: the residual stream's,
        :func:`~probes.extract.last_token_activations`); another site, e.g. the heads' ``o_proj``
        inputs, needs its own ``key``."""
        self.dir = (root or cache_dir() / "activations") / key
        self.chunk = chunk
        self.extract = extract
        self._where: dict[str, Path] = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                for k in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    self._where[k] = shard

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._where

    def _load(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        by_shard: dict[Path, list[str]] = {}
        for k in keys:
            by_shard.setdefault(self._where[k], []).append(k)
        out: dict[str, torch.Tensor] = {}
        for shard, ks in by_shard.items():
            with safe_open(str(shard), "pt") as f:
                for k in ks:
                    out[k] = f.get_tensor(k)
        return out

    def _save(self, keys: Sequence[str], acts: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.dir.glob("shard-*.safetensors")))
        path = self.dir / f"shard-{n:05d}-{keys[0][:8]}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: acts[i].contiguous() for i, k in enumerate(keys)}, str(tmp))
        tmp.replace(path)
        for k in keys:
            self._where[k] = path

    def activations(self, model: Any, tok: Any, texts: Sequence[str], batch_size: int = 16,
                    progress: bool = True) -> torch.Tensor:
        """``[len(texts), layers, hidden]`` float32: stored rows, the rest extracted and stored."""
        keys = [text_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._where))
        text_of = dict(zip(keys, texts, strict=True))
        for start in tqdm(range(0, len(missing), self.chunk), disable=not progress or not missing,
                          desc="activation chunks"):
            ks = missing[start : start + self.chunk]
            extract = self.extract or last_token_activations
            acts = extract(model, tok, [text_of[k] for k in ks], batch_size, progress=False)
            self._save(ks, acts)
        rows = self._load(list(dict.fromkeys(keys)))
        return torch.stack([rows[k].float() for k in keys])
