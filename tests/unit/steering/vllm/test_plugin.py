from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from steering.vllm import plugin
from steering.vllm.config import ADDITIONAL_CONFIG_KEY, WorkerConfig


def test_worker_config_gates_the_plugin() -> None:
    assert WorkerConfig.from_vllm_config(SimpleNamespace(additional_config={})) is None
    assert WorkerConfig.from_vllm_config(SimpleNamespace(additional_config=None)) is None
    cfg = WorkerConfig(directions=["/d/truth.safetensors"], max_ops_per_layer=3)
    back = WorkerConfig.from_vllm_config(SimpleNamespace(additional_config=cfg.to_additional_config()))
    assert back == cfg and ADDITIONAL_CONFIG_KEY in cfg.to_additional_config()


class FakeRunner:
    def __init__(self, extra: dict[str, Any]) -> None:
        self.vllm_config = SimpleNamespace(additional_config=extra)
        self.calls: list[str] = []

    def load_model(self) -> str:
        self.calls.append("load")
        return "loaded"

    def _model_forward(self, x: int) -> int:
        self.calls.append("forward")
        return x + 1


def test_wrappers_are_inert_without_config_and_patch_once() -> None:
    cls = type("Runner", (FakeRunner,), {"load_model": FakeRunner.load_model, "_model_forward": FakeRunner._model_forward})
    plugin._patch(cls, "load_model", plugin._wrap_load_model)
    plugin._patch(cls, "_model_forward", plugin._wrap_model_forward)
    wrapped = cls.__dict__["load_model"]
    plugin._patch(cls, "load_model", plugin._wrap_load_model)  # idempotent
    assert cls.__dict__["load_model"] is wrapped
    r = cls({})
    assert r.load_model() == "loaded" and getattr(r, "truthsteer", None) is None
    assert r._model_forward(1) == 2 and r.calls == ["load", "forward"]


def test_model_forward_prepares_the_step_before_and_sends_probes_after() -> None:
    cls = type("Runner2", (FakeRunner,), {"_model_forward": FakeRunner._model_forward})
    plugin._patch(cls, "_model_forward", plugin._wrap_model_forward)
    r = cls({})
    order: list[str] = []
    r.truthsteer = SimpleNamespace(  # type: ignore[attr-defined]
        planner=SimpleNamespace(plan=lambda runner: "plan"),
        prepare_step=lambda plan: order.append("prepare"),
        finish_step=lambda plan: order.append("finish"),
    )
    r.calls = order
    assert r._model_forward(41) == 42 and order == ["prepare", "forward", "finish"]


def test_directions_digest_follows_the_bundle_bytes(tmp_path: Any) -> None:
    """A changed bundle changes the worker config, hence vLLM's compile-cache key."""
    from steering.vllm.config import digest_files

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    first = digest_files([a, b])
    assert first == digest_files([a, b]) and first != digest_files([b, a]) and first != digest_files([a])
    b.write_bytes(b"twp")
    assert digest_files([a, b]) != first
    cfg = WorkerConfig(directions=[str(a), str(b)], directions_digest=digest_files([a, b]))
    assert cfg.to_additional_config() != WorkerConfig(directions=[str(a), str(b)], directions_digest=first).to_additional_config()


def test_cpu_aot_artifacts_can_be_finalized_after_register() -> None:
    """vLLM's AOT loader calls ``compiled_fn.finalize_loading``; torch's Inductor artifact (what the
    CPU build compiles to) has none unless the plugin adds its no-op."""
    from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable as Bundled

    plugin.register()
    fn = Bundled.__new__(Bundled)
    fn.compiled_fn = lambda *a: a  # what deserialisation leaves there: a plain function
    assert fn.finalize_loading(None) is None
