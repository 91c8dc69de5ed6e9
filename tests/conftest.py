from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator

import pytest

# helpers' asserts (tests/support) report their values as a test module's do
pytest.register_assert_rewrite("tests.support")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _reap(since: float, where: str) -> None:
    """Kill the vLLM engine processes started since ``since`` that outlived their parent (gigabytes
    each: back-to-back runs would pile them up until the OOM killer stops a later engine), and say
    where they leaked."""
    import psutil

    from tests.support.procs import orphaned_engines

    leaked = orphaned_engines(since)
    for p in leaked:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(leaked, timeout=10)
    if leaked:
        warnings.warn(f"{where}: killed {len(leaked)} orphaned vLLM engine process(es) "
                      f"{[(p.pid, p.info['name']) for p in leaked]}", stacklevel=1)


@pytest.fixture(autouse=True, scope="module")
def _no_orphaned_engines_per_module(request: pytest.FixtureRequest) -> Iterator[None]:
    start = time.time() - 1
    yield
    _reap(start, request.module.__name__)


@pytest.fixture(autouse=True, scope="session")
def _no_orphaned_engines() -> Iterator[None]:
    """Session-scoped engines (tests/integration/conftest.py) stop at the very end."""
    start = time.time() - 1
    yield
    _reap(start, "session")
