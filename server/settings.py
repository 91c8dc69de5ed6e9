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

from steering.engine import DEFAULT_DIRECTIONS


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

    # limits
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_n: int = Field(default=8, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)
    max_steering_ops: int = Field(default=16, ge=1)
    max_ops_per_layer: int = Field(default=4, ge=1, le=16)
    max_abs_strength: float = Field(default=64.0, gt=0)
    max_probe_inputs: int = Field(default=64, ge=1)

    # probes
    probe_flag_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="probe -> threshold on the mean score of a choice; flagged below it for truth probes, above it "
        "for other kinds (sycophancy); default: the bundle's probe.threshold",
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
