"""truthsteer steering engine: direction bundles, operators, per-request specs, vLLM integration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steering.llm import SteeredLLM

__all__ = ["SteeredLLM"]


def __getattr__(name: str) -> Any:  # lazy: importing steering must not import vLLM
    if name == "SteeredLLM":
        from steering.llm import SteeredLLM

        return SteeredLLM
    raise AttributeError(name)
