"""Start and stop the servers the benchmarks and the evaluation talk to, and describe the machine."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    """One line: host, CPU model and count, GPU when torch sees one, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{socket.gethostname()}: {os.cpu_count()} x {cpu}{gpu}, {platform.platform()}"


@dataclass
class Server:
    """A server subprocess in its own process group (so its engine children end with it)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, name: str, cmd: list[str], port: int, env: dict[str, str], timeout: float = 1800) -> Server:
        log = open(f"/tmp/truthsteer-bench-{name.replace(' ', '_')}-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        srv = cls(name, proc, port)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up (log: {log.name})")
            try:
                if httpx.get(f"{srv.base}/health", timeout=2).status_code == 200:
                    return srv
            except httpx.HTTPError:
                pass
            time.sleep(2)
        srv.stop()
        raise RuntimeError(f"{name} did not become healthy in {timeout:.0f} s (log: {log.name})")

    @classmethod
    def truthsteer(cls, port: int | None = None, env: dict[str, str] | None = None) -> Server:
        """``truthsteer serve``; ``env``: more ``TRUTHSTEER_*`` settings (model, dtype, ...)."""
        port = port or free_port()
        return cls.start("truthsteer", [sys.executable, "-m", "server.cli.main", "serve"], port,
                         {**(env or {}), "TRUTHSTEER_PORT": str(port)})

    @classmethod
    def plain_vllm(cls, port: int | None = None) -> Server:
        """vLLM's own OpenAI server on the same model folder, with the engine settings truthsteer's
        `steering.engine.prepare` uses (float32 on CPU, max_model_len, KV cache bytes, prefix
        caching, seed); the plugin is installed but inert without truthsteer's additional_config."""
        from steering.engine import EngineOptions, prepare

        eng = prepare(EngineOptions(steering=False)).engine_kwargs
        port = port or free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", eng["model"],
               "--served-model-name", os.path.basename(str(eng["model"]).rstrip("/")),
               "--dtype", str(eng["dtype"]), "--max-model-len", str(eng["max_model_len"]), "--seed", str(eng["seed"]),
               "--enable-prefix-caching", "--port", str(port), "--host", "127.0.0.1"]
        if "kv_cache_memory_bytes" in eng:
            cmd += ["--kv-cache-memory-bytes", str(eng["kv_cache_memory_bytes"])]
        return cls.start("plain vLLM", cmd, port, {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
