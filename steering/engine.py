"""Building a steering-enabled vLLM engine: one place that turns options into engine arguments.

Used by the offline :class:`~steering.llm.SteeredLLM`, the server and the benchmarks, so every
entry point loads the same model, the same bundles and the same worker configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering.bundle import DirectionBundle, load_bundle
from steering.errors import BundleError, SpecError
from steering.model_info import ModelInfo, describe
from steering.models import DEFAULT_MODEL, PACKAGED_MODELS, resolve_model
from steering.spec import parse_ops, resolve
from steering.vllm.config import WorkerConfig, digest_files

CONTRASTIVE_LOGITS_PROCESSOR = "steering.decoding.logits_processor:ContrastiveLogitsProcessor"
DEFAULT_DIRECTIONS = Path(__file__).resolve().parent.parent / "directions"


def cpu_has_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 (what vLLM's CPU backend needs for fast bfloat16)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any("avx512_bf16" in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


def cpu_dtype(model: str | None) -> str:
    """The CPU engine's dtype for ``dtype: auto``: the packaged model's ``cpu_dtype`` where the CPU
    has AVX512-BF16, else float32 (exact parity with the HF references)."""
    packaged = PACKAGED_MODELS.get(model or DEFAULT_MODEL)
    if packaged is not None and packaged.cpu_dtype == "bfloat16" and cpu_has_bf16():
        return "bfloat16"
    return "float32"


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return True
    return bool(current_platform.is_cpu())


@dataclass
class EngineOptions:
    model: str | None = None  # None: the bundled default model
    directions: Sequence[str | Path] = field(default_factory=lambda: [DEFAULT_DIRECTIONS])
    dtype: str = "auto"  # "auto": float32 on CPU (parity with HF references), model default on GPU
    max_model_len: int = 2048
    kv_cache_gib: float | None = None  # CPU: KV cache size (default 1 GiB); GPU: unused
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    max_ops_per_layer: int = 4
    force: bool = False  # load bundles whose model fingerprint differs
    seed: int = 0
    steering: bool = True  # False: plain vLLM (plugin inert), for baselines
    # echo scoring under ``decoding`` (contrasted prompt logprobs): stash memory num_layers x
    # (max_num_seqs + max_num_batched_tokens) x hidden x dtype bytes, see steering/decoding/stash.py
    prompt_contrast: bool = True
    # the ops' accelerator mode on CPU (every slot every step, no host flags; see custom_op.py)
    all_slots: bool = False
    # rows reserved in the vector tables for the live registry and for inline vectors in flight
    max_directions: int = 0
    max_inline: int = 0
    capture_rows: int = 0  # activation capture rows per step (0: no capture hooks)
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to vLLM


@dataclass(frozen=True)
class PreparedEngine:
    model_path: str
    info: ModelInfo
    bundles: dict[str, DirectionBundle]
    engine_kwargs: dict[str, Any]


def bundle_files(directions: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for d in directions:
        p = Path(d)
        if p.is_dir():
            files.extend(sorted(p.glob("*.safetensors")))
        elif p.is_file():
            files.append(p)
        else:
            raise BundleError(f"{p}: no such direction file or directory")
    return files


def directions_for(model: str | None, directions: Sequence[str | Path]) -> list[str | Path]:
    """The default ``directions/`` folder stands for the chosen model's shipped bundles.

    The default model's bundles are ``directions/*.safetensors``; an opt-in packaged model's are in
    ``directions/<alias>/`` (none: no bundles, rather than the default model's, which do not fit).
    Explicit directions are used as given.
    """
    if model is None or model == DEFAULT_MODEL or model not in PACKAGED_MODELS:
        return list(directions)
    if [Path(d).resolve() for d in directions] != [DEFAULT_DIRECTIONS]:
        return list(directions)
    own = DEFAULT_DIRECTIONS / model
    return [own] if own.is_dir() else []


def check_parallelism(opts: EngineOptions) -> None:
    """Tensor parallelism is supported (every rank applies the same ops to the replicated residual
    stream). Pipeline parallelism is refused for a steering engine: probe rows come from one
    worker's channel, and contrastive decoding reads premature layers' hidden states on the
    sampling stage, so both need every layer in one stage."""
    pp = int(opts.extra.get("pipeline_parallel_size", 1))
    if opts.steering and pp > 1:
        raise ValueError(f"truthsteer does not support pipeline parallelism (pipeline_parallel_size={pp}): probes "
                         "and contrastive decoding need every layer on one stage; use tensor_parallel_size")


def check_recommendations(bundles: dict[str, DirectionBundle], num_layers: int) -> None:
    """Every bundle's ``recommended_steering`` must pass the same validation as a request's
    ``steering`` against the loaded bundles (directions, layers, strengths, ops); else the load fails
    naming the file and the op."""
    for b in bundles.values():
        if not b.meta.recommended_steering:
            continue
        try:
            resolve(parse_ops(b.meta.recommended_steering, "recommended_steering"), bundles, num_layers,
                    param="recommended_steering")
        except SpecError as e:
            raise BundleError(f"{b.source}: {e.param}: {e}") from None


def prepare(opts: EngineOptions) -> PreparedEngine:
    """Resolve the model, load and validate the bundles, and assemble vLLM engine kwargs."""
    check_parallelism(opts)
    model = resolve_model(opts.model)
    model_path = str(model)
    info = describe(model) if Path(model_path).is_dir() else _describe_remote(model_path)
    bundles: dict[str, DirectionBundle] = {}
    files = bundle_files(directions_for(opts.model, opts.directions)) if opts.steering else []
    for f in files:
        b = load_bundle(f, info, force=opts.force)
        if b.name in bundles:
            raise BundleError(f"{f}: name: '{b.name}' also defined by {bundles[b.name].source}")
        bundles[b.name] = b
    check_recommendations(bundles, info.num_layers)
    cpu = _on_cpu()
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": (cpu_dtype(opts.model) if cpu else "auto") if opts.dtype == "auto" else opts.dtype,
        "max_model_len": opts.max_model_len,
        "seed": opts.seed,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "enforce_eager": opts.enforce_eager,
        "enable_prefix_caching": True,
    }
    if cpu:
        kwargs["kv_cache_memory_bytes"] = int((opts.kv_cache_gib or 1.0) * (1 << 30))
    else:
        kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
    if opts.steering:
        sources = [str(Path(b.source).resolve()) for b in bundles.values()]
        wc = WorkerConfig(
            directions=sources,
            directions_digest=digest_files(sources),
            max_ops_per_layer=opts.max_ops_per_layer,
            force=opts.force,
            prompt_contrast=opts.prompt_contrast,
            all_slots=opts.all_slots,
            max_directions=opts.max_directions,
            max_inline=opts.max_inline,
            capture_rows=opts.capture_rows,
        )
        kwargs["additional_config"] = wc.to_additional_config()
        # RPC the API process uses to find the probe channel (not part of vLLM's compile hash)
        kwargs["worker_extension_cls"] = "steering.vllm.worker_ext.TruthsteerWorkerExtension"
        # contrastive decoding (``decoding``): inert for requests that do not ask for it
        kwargs["logits_processors"] = [CONTRASTIVE_LOGITS_PROCESSOR]
    kwargs.update(opts.extra)
    return PreparedEngine(model_path, info, bundles, kwargs)


def _describe_remote(name: str) -> ModelInfo:
    """A hub-style name resolved from the local HF cache (offline); fingerprint unknown."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(name)
    return ModelInfo.from_hf_config(name, cfg)
