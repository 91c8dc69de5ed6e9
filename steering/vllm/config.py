"""Start-up configuration of the worker side, carried in vLLM's ``additional_config``.

Set once when the engine is built (never per request): it is part of vLLM's config hash, so a
compiled graph with the steering op is never confused with a plain one in the compile cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ADDITIONAL_CONFIG_KEY = "truthsteer"


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    directions: list[str] = Field(default_factory=list, description="bundle files to load")
    # sha256 over the bundle files' bytes: the tables the plugin traces into the graph take their
    # shapes from the bundles, so a changed or added bundle must never reuse a cached graph
    directions_digest: str = ""
    max_ops_per_layer: int = Field(default=4, ge=1, le=16)
    force: bool = False
    # echo scoring under ``decoding``: stash buffers get max_num_tokens more rows (prompt positions);
    # memory num_layers x (max_num_seqs + max_num_batched_tokens) x hidden x dtype bytes
    prompt_contrast: bool = False
    # rows reserved in every layer's vector table (shapes traced into the graph): live registry
    # directions and requests' inline vectors in flight (steering/vllm/dynamic_rows.py)
    max_directions: int = Field(default=0, ge=0, le=1024)
    max_inline: int = Field(default=0, ge=0, le=4096)
    # activation capture (POST /v1/activations): rows per step and layer; 0 = no capture hooks
    capture_rows: int = Field(default=0, ge=0, le=65536)
    # run every op slot and stash row every step without reading host flags, as on accelerators
    # (always on there; on CPU a test mode of the accelerator branch, bit-identical results)
    all_slots: bool = False
    plugin_version: int = 4  # bump when the graph the plugin builds changes

    def to_additional_config(self) -> dict[str, Any]:
        return {ADDITIONAL_CONFIG_KEY: self.model_dump()}

    @classmethod
    def from_vllm_config(cls, vllm_config: Any) -> WorkerConfig | None:
        extra = getattr(vllm_config, "additional_config", None) or {}
        if not isinstance(extra, dict) or ADDITIONAL_CONFIG_KEY not in extra:
            return None
        return cls.model_validate(extra[ADDITIONAL_CONFIG_KEY])


def digest_files(paths: Iterable[str | Path]) -> str:
    """sha256 over the files' names and bytes, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        h.update(Path(p).read_bytes())
    return h.hexdigest()
