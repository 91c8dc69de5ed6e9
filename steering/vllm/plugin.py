"""vLLM general plugin (entry point ``vllm.general_plugins: truthsteer``).

Loaded by vLLM in every process. It registers the steering custom op and wraps two model-runner
methods, doing nothing unless the engine was built with truthsteer's ``additional_config``:

* ``load_model``: after the weights are loaded and before the first (compiling) forward pass,
  install a :class:`~steering.vllm.runtime.SteeringRuntime` on the runner: it hooks every decoder
  layer with the custom op and owns the fixed-shape per-step tables.
* ``_model_forward`` (vLLM's documented override point, called once per step inside the forward
  context, outside any compiled region or CUDA graph): compute the step's plan
  (:mod:`steering.vllm.step_plan`) and let the steering tables, the probe read-out, the stash and
  the capture read it before the pass; after it (before vLLM computes the logits and samples),
  decide the probe gates and send the probe rows of the step.
* ``_get_prompt_logprobs_dict``: contrasted prompt logprobs of ``decoding`` requests (echo
  scoring, :mod:`steering.decoding.prompt_contrast`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
_PATCHED = "_truthsteer_patched"


def _wrap_load_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = fn(self, *args, **kwargs)
        from steering.vllm.config import WorkerConfig
        from steering.vllm.runtime import SteeringRuntime

        cfg = WorkerConfig.from_vllm_config(self.vllm_config)
        if cfg is not None and getattr(self, "truthsteer", None) is None:
            _log_with_vllm()  # vLLM has configured this process's logging by now
            self.truthsteer = SteeringRuntime.install(self, cfg)
            from steering.decoding import logits_processor

            # after the steering and probe hooks: the stash reads the steered stream
            prompt_rows = int(self.max_num_tokens) if cfg.prompt_contrast else 0
            self.truthsteer_stash = logits_processor.install(self, prompt_rows)
            if cfg.capture_rows:  # last: reads the steered stream, like the probes
                from steering.vllm import capture

                self.truthsteer_capture = capture.install(self, cfg.capture_rows)
        return out

    setattr(load_model, _PATCHED, True)
    return load_model


def _wrap_model_forward(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def _model_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        runtime = getattr(self, "truthsteer", None)
        if runtime is None:
            return fn(self, *args, **kwargs)
        plan = runtime.planner.plan(self)  # once per step; every consumer below reads it
        runtime.prepare_step(plan)
        stash = getattr(self, "truthsteer_stash", None)
        if stash is not None:
            stash.prepare(plan)
        cap = getattr(self, "truthsteer_capture", None)
        if cap is not None:
            cap.prepare(plan)
        out = fn(self, *args, **kwargs)
        if cap is not None:
            cap.collect()
        # before sampling: the gates decide (probe-gated decoding: this step's contrast) and rows are sent
        runtime.finish_step(plan)
        return out

    setattr(_model_forward, _PATCHED, True)
    return _model_forward


def _patch(cls: type, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    fn = cls.__dict__.get(name)
    if fn is None or getattr(fn, _PATCHED, False):
        return
    setattr(cls, name, wrapper(fn))


def register() -> None:
    """Entry point: idempotent, cheap in processes that never build a model."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    import steering.vllm.custom_op  # noqa: F401  (registers torch.ops.truthsteer.steer)

    runners: list[type] = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        runners.append(CPUModelRunner)
    except ImportError:  # GPU-only builds
        pass
    for cls in runners:
        _patch(cls, "load_model", _wrap_load_model)
    _patch(GPUModelRunner, "_model_forward", _wrap_model_forward)
    _patch(GPUModelRunner, "_get_prompt_logprobs_dict", _wrap_prompt_logprobs)
    _allow_aot_reload_on_cpu()


def _log_with_vllm() -> None:
    """Worker-side truthsteer logs (``steering.*``: the runtime's install line with its layers,
    probes and op mode, rejected specs) go to vLLM's own handlers at INFO (called at model load,
    once vLLM has configured the worker's logging); without this only warnings reached the
    server's output."""
    ours, theirs = logging.getLogger("steering"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def _allow_aot_reload_on_cpu() -> None:
    """vLLM 0.32 on CPU compiles with plain Inductor, whose AOT artifact (torch's
    ``BundledAOTAutogradSerializableCallable``) has no ``finalize_loading``; vLLM's loader calls it
    unconditionally, fails, and recompiles the model at every start (1-3 min here). Nothing is
    left to finalize for that artifact (it is fully loaded by deserialisation), so a no-op lets
    vLLM use its cache. GPU builds compile through vLLM's own backend, whose artifact has the
    method: this does nothing there. A truthsteer engine's cache key covers its start-up
    configuration and the bundles' bytes (:class:`~steering.vllm.config.WorkerConfig`)."""
    try:
        from torch._dynamo.aot_compile_types import (
            BundledAOTAutogradSerializableCallable as Bundled,
        )
    except ImportError:  # other torch versions: leave vLLM's behaviour alone
        return
    if "finalize_loading" not in Bundled.__dict__:
        Bundled.finalize_loading = _finalize_nothing  # type: ignore[attr-defined]


def _finalize_nothing(self: Any, vllm_config: Any) -> None:
    """Already loaded (see :func:`_allow_aot_reload_on_cpu`)."""


def _wrap_prompt_logprobs(fn: Callable[..., Any]) -> Callable[..., Any]:
    from steering.decoding import prompt_contrast

    wrapped = prompt_contrast.wrap(fn)
    setattr(wrapped, _PATCHED, True)
    return wrapped
