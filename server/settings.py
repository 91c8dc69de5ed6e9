"""Server settings: environment variables ``TRUTHSTEER_*`` and an optional YAML file.

Precedence: init arguments > environment > YAML file (``TRUTHSTEER_CONFIG`` or ``--config``) >
defaults. Read once at start-up; nothing here changes per request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from steering.engine import DEFAULT_DIRECTIONS, EngineOptions


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRUTHSTEER_", extra="forbid", env_nested_delimiter="__")

    # model and engine
    model: str | None = Field(default=None, description="HF folder or packaged alias; default: bundled SmolLM2")
    served_model_name: str | None = Field(default=None, description="name in the API; default: model folder name")
    directions: list[Path] = Field(default_factory=lambda: [DEFAULT_DIRECTIONS])
    force_directions: bool = False
    dtype: str = "auto"
    max_model_len: int = Field(default=2048, ge=16)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = False
    seed: int = 0
    prompt_contrast: bool = Field(
        default=True,
        description="echo scoring under decoding: contrasted prompt logprobs for completions with echo + logprobs + "
        "decoding; costs num_layers x (max_num_seqs + max_num_batched_tokens) x hidden x dtype bytes of stash "
        "(150 MB for the default CPU model); off: such requests are a 400",
    )
    all_slots: bool = Field(
        default=False,
        description="run the steering, probe and stash ops in their accelerator mode on CPU too (every slot and row "
        "every step, no host flags read; always on for GPUs); a test mode, same results, slower",
    )

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list, description="empty: no authentication")
    metrics_require_auth: bool = False
    ui_enabled: bool = Field(default=True, description="serve the browser playground at /ui (static files; "
                             "its API calls need a key like any client)")

    # limits
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_n: int = Field(default=8, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)
    max_steering_ops: int = Field(default=16, ge=1)
    max_ops_per_layer: int = Field(default=4, ge=1, le=16)
    max_abs_strength: float = Field(default=64.0, gt=0)
    max_probe_inputs: int = Field(default=64, ge=1)

    # admission control and lifecycle (server/admission.py, server/lifecycle.py)
    max_queued_requests: int | None = Field(
        default=256, ge=0, description="generation requests admitted but not started in the engine (no output "
        "yet) beyond which new ones get a 429 with Retry-After; None: unbounded")
    max_concurrent_per_key: int | None = Field(
        default=None, ge=1, description="generation requests in flight per API key (bearer token); None: no limit")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a 429")
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="SIGTERM: /health and new requests answer 503 while in-flight requests "
        "finish for at most this long; then the engine stops and the process exits 0")
    exit_on_engine_death: bool = Field(
        default=True, description="exit non-zero once the engine died (so compose / Kubernetes restart the "
        "server); off: stay up, answering 503, for debugging")
    engine_death_exit_s: float = Field(default=2.0, ge=0, description="after the engine died: seconds of 503s "
                                       "(in-flight requests get their errors) before the process exits")
    # steering beyond the start-up bundles (server/steering_state.py)
    default_steering: list[dict[str, Any]] | None = Field(
        default=None, description="steering ops applied to requests without `steering` (`\"steering\": []` opts "
        "out); JSON list like a request's, naming start-up bundles")
    max_directions: int = Field(default=8, ge=0, le=1024, description="live registry slots (POST /v1/directions), "
                                "reserved in the vector tables at start-up; 0 disables the registry")
    admin_api_keys: list[SecretStr] = Field(default_factory=list, description="keys that may change the registry "
                                            "(also valid API keys); none and no api_keys: the registry is open")
    max_inline_vectors: int = Field(default=4, ge=0, le=16, description="inline vectors per request; 0 refuses them")
    max_inline_norm: float = Field(default=1e4, gt=0, description="cap on an inline vector's L2 norm per layer")
    inline_slots: int = Field(default=64, ge=0, le=4096, description="inline vectors in flight over the server "
                              "(rows reserved in the vector tables); more is a 429")

    activation_rows: int = Field(default=512, ge=0, le=65536, description="POST /v1/activations: positions captured "
                                 "per step (buffers of num_layers x rows x hidden, 35 MB for the default model); "
                                 "0 disables the endpoint")
    max_activation_values: int = Field(default=1 << 22, ge=1, description="cap on layers x positions x hidden "
                                       "per text of /v1/activations (413 above)")

    # probes
    probe_flag_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="probe -> threshold on the mean score of a choice; flagged below it for truth probes, above it "
        "for other kinds (sycophancy); default: the bundle's probe.threshold",
    )

    def engine_options(self) -> EngineOptions:
        """The engine these settings ask for (``steering.engine.prepare`` builds it)."""
        return EngineOptions(
            model=self.model, directions=self.directions, dtype=self.dtype, max_model_len=self.max_model_len,
            kv_cache_gib=self.kv_cache_gib, gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size, enforce_eager=self.enforce_eager,
            max_ops_per_layer=self.max_ops_per_layer, force=self.force_directions, seed=self.seed,
            prompt_contrast=self.prompt_contrast, all_slots=self.all_slots, max_directions=self.max_directions,
            max_inline=self.inline_slots, capture_rows=self.activation_rows,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``overrides`` (None values ignored), env, and the YAML file ``config`` (or
    ``$TRUTHSTEER_CONFIG``)."""
    path = config or os.environ.get("TRUTHSTEER_CONFIG")
    cls: type[Settings] = Settings
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"settings file {path} does not exist")
        cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": str(path)}})
    return cls(**{k: v for k, v in overrides.items() if v is not None})
