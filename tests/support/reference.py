"""Plain-PyTorch reference: HF transformers forward with the operators applied by forward hooks
(residual ops on the decoder layers' outputs; ``attn_heads`` ops add ``strength * v`` to each
layer's ``self_attn.o_proj`` input with a pre-hook)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from probes.extract import decoder_layers
from steering import ops
from steering.bundle import DirectionBundle
from steering.spec import ResolvedOp


def _apply(stream: torch.Tensor, op: ResolvedOp, bundle: DirectionBundle, layer: int) -> torch.Tensor:
    if op.op == "add":
        return ops.add(stream, bundle.vectors[layer], op.strength)
    if op.op == "ablate":
        return ops.ablate(stream, bundle.unit(layer), op.strength)
    target = op.targets[op.layers.index(layer)]
    return ops.clamp(stream, bundle.unit(layer), target, op.strength)


@torch.inference_mode()
def last_token_logprobs(
    model: Any,
    input_ids: Sequence[int],
    steering: Sequence[ResolvedOp],
    bundles: Mapping[str, DirectionBundle],
    capture: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Log-probabilities of the next token after ``input_ids`` (a prompt: every position is a
    prompt position, so ``generated``-only operations do not apply)."""
    handles = []
    for k, layer in enumerate(decoder_layers(model)):
        here = [o for o in steering if k in o.layers and o.positions in ("all", "prompt")]
        mine = [o for o in here if o.site == "residual"]
        heads = [o for o in here if o.site == "attn_heads"]
        if heads:
            shift = sum(o.strength * bundles[o.direction].head_vectors[k].reshape(-1) for o in heads)

            def pre(_m: Any, args: Any, shift: Any = shift) -> Any:
                return (args[0] + shift.to(args[0].dtype), *args[1:])

            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))

        def hook(_m: Any, _a: Any, out: Any, mine: list[ResolvedOp] = mine, k: int = k) -> Any:
            h = out[0] if isinstance(out, tuple) else out
            for o in mine:
                h = _apply(h, o, bundles[o.direction], k)
            if capture is not None:
                capture[k] = h[0].clone()
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handles.append(layer.register_forward_hook(hook))
    try:
        logits = model(torch.tensor([list(input_ids)])).logits[0, -1]
    finally:
        for hd in handles:
            hd.remove()
    return torch.log_softmax(logits.float(), -1)
