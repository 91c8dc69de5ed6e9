"""``truthsteer serve`` in a subprocess on a free port, for the tests that drive the real server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.procs import free_port, running_process


@contextlib.contextmanager
def running_server(env: dict[str, str], log_path: Path | None = None, timeout_s: float = 900) -> Iterator[str]:
    """Start the server with ``env`` over this process's environment (``TRUTHSTEER_*`` settings;
    the port is chosen here) and yield its base URL once ``/health`` answers; stop it afterwards.
    Its output goes to ``log_path`` (a temporary file by default)."""
    port = free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="truthsteer-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    base = f"http://127.0.0.1:{port}"
    with running_process("server", [sys.executable, "-m", "server.cli.main", "serve"], f"{base}/health", log_path,
                         env={**os.environ, **env, "TRUTHSTEER_PORT": str(port)},
                         timeout_s=timeout_s, poll_s=2, stop_s=60):
        yield base


@contextlib.contextmanager
def server_process(env: dict[str, str], timeout_s: float = 900) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """Like :func:`running_server`, for tests that signal or kill the server themselves: yields the
    base URL, the process and its log; kills it afterwards if it is still running."""
    port = free_port()
    fd, name = tempfile.mkstemp(prefix="truthsteer-server-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        # its own process group, so that killing it also kills its engine (SIGKILL to the server alone
        # leaves the engine core running, re-parented to init)
        proc = subprocess.Popen([sys.executable, "-m", "server.cli.main", "serve"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env, "TRUTHSTEER_PORT": str(port)}, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(f"{base}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server not ready ({log_path}): {log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield base, proc, log_path
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server stops its engine), SIGKILL after 60 s; then every process it started
    that is still up (vLLM's engine core may leave the server's process group)."""
    import psutil

    kids: list[psutil.Process] = []
    if proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            kids = psutil.Process(proc.pid).children(recursive=True)
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.kill()
    psutil.wait_procs(kids, timeout=10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
