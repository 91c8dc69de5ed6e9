"""``truthsteer serve`` in a subprocess on a free port, for the tests that drive the real server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.procs import free_port, running_process


@contextlib.contextmanager
def running_server(env: dict[str, str], log_path: Path | None = None, timeout_s: float = 900) -> Iterator[str]:
    """Start the server with ``env`` over this process's environment (``TRUTHSTEER_*`` settings;
    the port is chosen here) and yield its base URL once ``/health`` answers; stop it afterwards.
    Its output goes to ``log_path`` (a temporary file by default)."""
    with server_process(env, log_path, timeout_s) as (base, _proc, _log):
        yield base


@contextlib.contextmanager
def server_process(env: dict[str, str], log_path: Path | None = None, timeout_s: float = 900
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """Like :func:`running_server`, for tests that signal or kill the server themselves: yields the
    base URL, the process and its log; stops it (and any engine process it left) afterwards."""
    port = free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="truthsteer-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    base = f"http://127.0.0.1:{port}"
    with running_process("server", [sys.executable, "-m", "server.cli.main", "serve"], f"{base}/health", log_path,
                         env={**os.environ, **env, "TRUTHSTEER_PORT": str(port)},
                         timeout_s=timeout_s, poll_s=2, stop_s=60) as proc:
        yield base, proc, log_path


def served_probes(base: str, key: str) -> set[str]:
    """The names of the directions a running server scores with (those that carry a probe)."""
    listed = httpx.get(f"{base}/v1/directions", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return {d["name"] for d in listed.json()["data"] if d["probe_layer"] is not None}
