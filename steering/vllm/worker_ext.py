"""Worker extension (vLLM ``worker_extension_cls``): RPC methods the API process calls (probe channel
at start-up; live direction registry between steps)."""

from __future__ import annotations

from typing import Any


class TruthsteerWorkerExtension:
    model_runner: Any

    def truthsteer_probe_address(self) -> str | None:
        """Where this worker publishes probe rows (``None`` on ranks that do not publish)."""
        runtime = getattr(self.model_runner, "truthsteer", None)
        return runtime.probe_address if runtime is not None else None

    def truthsteer_probe_ping(self, probe_id: str) -> bool:
        """Send an empty probe row for ``probe_id`` (the API's start-up handshake)."""
        runtime = getattr(self.model_runner, "truthsteer", None)
        sender = runtime.sender if runtime is not None else None
        return sender.ping(probe_id) if sender is not None else False

    def truthsteer_set_direction(self, slot: int, digest: str, layers: list[int], data: bytes) -> bool:
        """Fill live-registry slot ``slot`` (float32 ``[len(layers), H]`` bytes); between steps."""
        runtime = getattr(self.model_runner, "truthsteer", None)
        if runtime is None:
            return False
        runtime.dynamic.set_direction(int(slot), str(digest), [int(x) for x in layers], bytes(data))
        return True

    def truthsteer_take_activations(self, capture_id: str) -> dict[str, Any] | None:
        """The rows captured for ``capture_id`` (forgotten afterwards); ``None`` without capture."""
        cap = getattr(self.model_runner, "truthsteer_capture", None)
        return cap.take(capture_id) if cap is not None else None

    def truthsteer_decoding_stats(self) -> dict[str, Any] | None:
        """Counters of contrastive decoding on this worker (rows contrasted, sparse path in use)."""
        from steering.decoding.logits_processor import stats

        return stats(self.model_runner)
