"""What users would run instead: HF transformers ``generate`` with a steering forward hook on the
decoder layers (the repeng / steering-vectors way), batched (left padding, greedy, fixed output
lengths like the servers' ``ignore_eos``).

Closed-loop shapes: the requests in static batches of the concurrency level. Poisson shape: requests
are batched as they arrive (everything that has arrived when the model is free goes into the next
batch, generated to the longest max_tokens of the batch; only each request's own tokens count).
Streaming is not measured (generate returns whole batches): TTFT is the time from arrival to the
batch's end, ITL is not reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.loadstats import RequestTiming, summarize

if TYPE_CHECKING:
    from bench.loadgen import Shape

STRENGTH = 2.0
LAYERS = (12, 13, 14)


def _load() -> tuple[Any, Any]:
    import torch

    from probes.extract import decoder_layers, load_hf
    from steering.bundle import load_bundle
    from steering.engine import EngineOptions, bundle_files
    from steering.model_info import describe
    from steering.models import resolve_model

    folder = resolve_model(None)
    model, tok = load_hf(folder)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    truth = next(b for b in (load_bundle(f, describe(folder)) for f in bundle_files(EngineOptions().directions))
                 if b.name == "truth")
    layers = decoder_layers(model)
    for k in LAYERS:
        vec = (STRENGTH * truth.vectors[k]).to(torch.float32)

        def hook(_m: Any, _inp: Any, out: Any, v: torch.Tensor = vec) -> Any:
            if isinstance(out, tuple):
                return (out[0] + v.to(out[0].dtype), *out[1:])
            return out + v.to(out.dtype)

        layers[k].register_forward_hook(hook)
    return model, tok


def _generate(model: Any, tok: Any, prompts: Sequence[str], max_tokens: int) -> list[int]:
    """Greedy, exactly ``max_tokens`` new tokens per row (EOS suppressed, as ``ignore_eos`` does on
    the servers): output lengths never depend on what the steering does to the text."""
    import torch

    enc = tok(list(prompts), return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return [int(out.shape[1] - enc["input_ids"].shape[1])] * len(prompts)


def run(shapes: Sequence[Shape]) -> dict[str, Any]:
    model, tok = _load()
    _generate(model, tok, ["warm-up"], 2)
    out: dict[str, Any] = {}
    for shape in shapes:
        reqs = shape.requests
        timings: list[RequestTiming] = []
        t0 = time.perf_counter()
        if shape.concurrency is not None:
            for i in range(0, len(reqs), shape.concurrency):
                batch = reqs[i:i + shape.concurrency]
                start = time.perf_counter()
                counts = _generate(model, tok, [r.prompt for r in batch], max(r.max_tokens for r in batch))
                end = time.perf_counter()
                timings += [RequestTiming(start, (end,), c) for c in counts]
        else:
            pending = sorted(reqs, key=lambda r: r.at)
            while pending:
                now = time.perf_counter() - t0
                if pending[0].at > now:
                    time.sleep(pending[0].at - now)
                    now = pending[0].at
                batch = [r for r in pending if r.at <= now][:64]
                pending = pending[len(batch):]
                counts = _generate(model, tok, [r.prompt for r in batch], max(r.max_tokens for r in batch))
                end = time.perf_counter()
                timings += [RequestTiming(t0 + r.at, (end,), min(c, r.max_tokens))
                            for r, c in zip(batch, counts, strict=True)]
        s = summarize(timings, time.perf_counter() - t0)
        s["itl_p50_ms"] = s["itl_p99_ms"] = float("nan")
        out[shape.name] = s
        print(f"{'HF generate + steering hook':<32} {shape.name:<14} {s['tokens_per_s']:8.1f} tok/s", flush=True)
    return out
