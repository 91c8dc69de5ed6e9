"""``truthsteer serve`` in a subprocess on a free port, for the tests that drive the real server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(env: dict[str, str], log_path: Path | None = None, timeout_s: float = 900) -> Iterator[str]:
    """Start the server with ``env`` over this process's environment (``TRUTHSTEER_*`` settings;
    the port is chosen here) and yield its base URL once ``/health`` answers; stop it afterwards.
    Its output goes to ``log_path`` (a temporary file by default), never to a pipe nobody reads."""
    port = free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="truthsteer-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "steering.cli", "serve"],
                                env={**os.environ, **env, "TRUTHSTEER_PORT": str(port)},
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({log_path}): {log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not become healthy in {timeout_s:.0f} s ({log_path})")
            time.sleep(2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
