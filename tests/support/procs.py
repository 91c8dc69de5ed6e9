"""Test helpers for a child process with an HTTP readiness URL (the server, Prometheus)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_process(name: str, cmd: Sequence[str], ready_url: str, log_path: Path, *, env: dict[str, str] | None = None,
                    timeout_s: float, poll_s: float, stop_s: float) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` with its output in ``log_path`` (never a pipe nobody reads) until ``ready_url``
    answers 200, then yield the process; stop it afterwards (:func:`stop_process`). A process that
    exits or is not ready in ``timeout_s`` raises, naming ``name`` and the log."""
    with log_path.open("w") as log:
        # its own process group, so that stopping it also stops its engine processes (a server killed
        # after stop_s would otherwise leave its engine core and workers running, gigabytes each)
        proc = subprocess.Popen(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(ready_url):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({log_path}): {log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} was not ready in {timeout_s:.0f} s ({log_path})")
            time.sleep(poll_s)
        yield proc
    finally:
        stop_process(proc, stop_s)


def stop_process(proc: subprocess.Popen[bytes], stop_s: float) -> None:
    """SIGTERM (a server stops its engine), SIGKILL after ``stop_s``; then whatever is left of its
    process group, and every process it had started that is still up (vLLM's engine core may leave
    the group). A process that already exited (a test killed it) only gets the clean-up."""
    import psutil

    kids: list[psutil.Process] = []
    if proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            kids = psutil.Process(proc.pid).children(recursive=True)
        proc.terminate()
        try:
            proc.wait(stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(stop_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.kill()
    psutil.wait_procs(kids, timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def orphaned_engines(since: float) -> list[Any]:
    """vLLM engine processes (``VLLM::EngineCore``, ``VLLM::Worker``...) started at or after
    ``since`` (epoch seconds) whose parent has gone (re-parented to init): what a test leaks when it
    stops a server or an in-process engine without stopping its engine."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline", "ppid", "create_time"]):
        info = p.info
        label = f"{info['name'] or ''} {' '.join(info['cmdline'] or [])}"
        if info["ppid"] == 1 and "VLLM" in label and (info["create_time"] or 0) >= since:
            out.append(p)
    return out
