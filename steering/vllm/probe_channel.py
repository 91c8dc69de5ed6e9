"""Side channel for per-token probe logits: worker (ZMQ PUSH, binds) -> API process (PULL, connects).

The worker computes probe logits inside the forward pass (``torch.ops.truthsteer.probe``) and,
right after the pass, sends one message per step with the rows of the requests that asked for
scores. Every row is keyed by the request's own probe id (chosen by the API process and carried in
``SamplingParams.extra_args``) and by the absolute sequence position whose activation was read, so
scores can never be attributed to another request or token, and a recomputed position (after a
preemption) simply overwrites itself. The API process learns the address once, at start-up, through
an engine RPC (see :mod:`steering.vllm.worker_ext`) and, before serving, checks the channel end to
end (:meth:`ProbeReceiver.handshake`); nothing travels through files or environment variables.
Wire format: msgpack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)


STEERED = 1  # flag bit of a gated request's sampling row: its forward pass was steered
CONTRASTED = 2  # flag bit: the token sampled there was drawn from the contrasted distribution (decoding gate)


class StepMessage(msgspec.Struct, array_like=True):
    names: list[str]  # probe order of the logits columns
    # (probe id, positions, logits[pos][probe], flags[pos]: STEERED | CONTRASTED bits for gated
    # requests' sampling rows, -1 n/a)
    rows: list[tuple[str, list[int], list[list[float]], list[int]]]


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(StepMessage)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class ProbeSender:
    """Worker side: a PUSH socket on a private IPC path. Never blocks the engine: drops and counts."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="truthsteer-")
        self.address = f"ipc://{os.path.join(self._dir, 'probes.sock')}"
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.address)
        self.dropped = 0

    def send(self, msg: StepMessage) -> bool:
        """Queue ``msg`` for the reader; ``False`` (and counted) when it had to be dropped."""
        try:
            self._sock.send(_ENC.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:  # no API process connected, or it fell far behind
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("truthsteer: dropped %d probe messages (no reader)", self.dropped)
            return False
        return True

    def ping(self, probe_id: str) -> bool:
        """An empty row for ``probe_id``: the reader's sink for it fires (the start-up handshake)."""
        return self.send(StepMessage([], [(probe_id, [], [], [])]))

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


@dataclass
class ProbeSink:
    """The scores of one engine request, by absolute sequence position."""

    names: list[str] = field(default_factory=list)
    by_pos: dict[int, list[float]] = field(default_factory=dict)  # position -> scores in ``names`` order
    flags: dict[int, int] = field(default_factory=dict)  # position -> STEERED | CONTRASTED (gated requests)
    event: asyncio.Event | None = None

    def add(self, names: list[str], positions: list[int], logits: list[list[float]], flags: list[int]) -> None:
        self.names = names
        for p, row in zip(positions, logits, strict=True):
            self.by_pos[p] = [_sigmoid(z) for z in row]
        for p, f in zip(positions, flags, strict=False):
            if f >= 0:
                self.flags[p] = f
        if self.event is not None:
            self.event.set()

    def missing(self, positions: range) -> bool:
        return any(p not in self.by_pos for p in positions)

    def scores(self, probes: list[str], positions: range) -> dict[str, list[float | None]]:
        """Scores of ``probes`` at ``positions``; ``None`` where a position never arrived."""
        col = {n: i for i, n in enumerate(self.names)}
        out: dict[str, list[float | None]] = {}
        for name in probes:
            j = col.get(name)
            out[name] = [
                (self.by_pos[p][j] if j is not None and p in self.by_pos else None) for p in positions
            ]
        return out


class ProbeReceiver:
    """API side: one PULL socket, a background task dispatching rows to registered sinks."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)
        self._sinks: dict[str, ProbeSink] = {}
        self._task: asyncio.Task[None] | None = None
        self.unclaimed = 0  # rows for ids nobody waits for (finished or aborted requests)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="truthsteer-probes")

    async def _run(self) -> None:
        while True:
            data = await self._sock.recv()
            self.dispatch(data)

    def dispatch(self, data: bytes) -> None:
        try:
            msg = _DEC.decode(data)
        except msgspec.DecodeError:
            log.error("truthsteer: undecodable probe message (%d bytes)", len(data))
            return
        for pid, positions, logits, flags in msg.rows:
            sink = self._sinks.get(pid)
            if sink is None:
                self.unclaimed += 1
                continue
            sink.add(msg.names, positions, logits, flags)

    async def handshake(self, ping: Callable[[str], Awaitable[Any]], timeout: float) -> bool:
        """Until ``timeout``: ask the worker to ``ping`` a private id and wait for it to arrive.
        ZeroMQ connects in the background and the worker drops what it cannot send at once, so
        without this the first rows after start-up could be lost (their tokens would get no score)."""
        pid = f"ping-{uuid.uuid4().hex}"
        sink = self.register(pid)
        assert sink.event is not None
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await ping(pid)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sink.event.wait(), 0.1)
                    return True
            return False
        finally:
            self.unregister(pid)

    def register(self, probe_id: str) -> ProbeSink:
        sink = ProbeSink(event=asyncio.Event())
        self._sinks[probe_id] = sink
        return sink

    def unregister(self, probe_id: str) -> None:
        self._sinks.pop(probe_id, None)

    async def wait(self, sink: ProbeSink, positions: range, timeout: float) -> bool:
        """Wait until every position has arrived (usually already true: the worker sends before sampling)."""
        assert sink.event is not None
        deadline = time.monotonic() + timeout
        while sink.missing(positions):
            sink.event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(sink.event.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._sock.close(0)
        self._ctx.term()
