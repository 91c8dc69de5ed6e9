"""The model's own verdict as a truth scorer: a no-training baseline for the truth probes.

In the ``verdict`` frame (:mod:`probes.frames`) the next token after "The statement is" is the
model's verdict. Its logit difference ``logit(" true") - logit(" false")`` is, up to the final
RMS norm's per-token scale, linear in the last decoder layer's residual stream ``h``:
``h . (g * (U[true] - U[false]))`` with ``g`` the final norm's weight and ``U`` the unembedding.
:func:`verdict_direction` builds that vector; :func:`domain_aurocs` scores every truth domain's
statements with it (the same per-text activation store and frames as ``truthsteer probes lodo``),
so the report can say how much a trained probe reads beyond what the model itself says.

Run: ``python -m probes.verdict_baseline --model qwen2.5-coder-1.5b-instruct --dtype bfloat16``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from probes.lodo import DomainData
from probes.methods import auroc


def verdict_direction(unembed: np.ndarray, norm_weight: np.ndarray, yes: int, no: int) -> np.ndarray:
    """``g * (U[yes] - U[no])``: the logit difference's direction in the pre-norm residual stream."""
    return np.asarray(norm_weight * (unembed[yes] - unembed[no]), dtype=np.float64)


def domain_aurocs(domains: Sequence[DomainData], direction: np.ndarray) -> dict[str, float | None]:
    """Each domain's AUROC of ``h_last . direction`` (``h_last``: the last layer, every split)."""
    return {d.name: auroc(d.x[:, -1].astype(np.float64) @ direction, d.y) for d in domains}


def main(argv: list[str] | None = None) -> int:
    from probes.actstore import ActivationStore, model_key
    from probes.extract import load_hf
    from probes.lodo_cli import domain_data, load_domains
    from steering.model_info import describe
    from steering.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--max-per-domain", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", default=" true, false", help="the verdict tokens, comma-separated")
    args = ap.parse_args(argv)
    folder = resolve_model(args.model)
    info = describe(folder)
    dtype = getattr(torch, args.dtype)
    model, tok = load_hf(folder, dtype)
    doms = domain_data(load_domains(None, args.max_per_domain, args.seed), "verdict",
                       ActivationStore(model_key(info.fingerprint, dtype)), model, tok, 16)
    yes, no = (tok(t, add_special_tokens=False)["input_ids"][0] for t in args.tokens.split(","))
    w = verdict_direction(model.get_output_embeddings().weight.detach().float().numpy(),
                          model.model.norm.weight.detach().float().numpy(), yes, no)
    per = domain_aurocs(doms, w)
    for name, a in per.items():
        print(f"{name:22s} {a if a is not None else float('nan'):.3f}")
    vals = [a for a in per.values() if a is not None]
    print(f"mean over {len(vals)} domains {np.mean(vals):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
