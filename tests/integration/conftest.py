"""One steered engine and one plain vLLM engine per test session (start-up is the slow part)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def steered() -> Iterator[Any]:
    from steering.llm import SteeredLLM

    llm = SteeredLLM()
    yield llm
    llm.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def plain(steered: Any) -> Iterator[Any]:
    """vLLM as it is: same model and settings, truthsteer's plugin inert (no additional_config)."""
    from steering.llm import SteeredLLM

    llm = SteeredLLM(steering=False)
    yield llm
    llm.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def hf_model(steered: Any) -> Any:
    from probes.extract import load_hf

    model, _tok = load_hf(steered.prepared.model_path)
    return model
