"""``truthsteer probes lodo``: the leave-one-domain-out recipe search, and the bundles it ships.

For every reading frame (:mod:`probes.frames`) the truth domains' statements are framed, their
activations extracted through the per-text store (:mod:`probes.actstore`), and
:func:`probes.lodo.search` ranks the recipes. The frame and recipe with the best mean LODO
*validation* AUROC win; the report shows their test numbers, the transfer matrix and the
Mahalanobis-cosine fit. With ``--bundles DIR`` the winner is trained on every domain's train and
validation splits (but not ``--bundle-exclude``'s, by default TruthfulQA: the intervention
evaluation's benchmark, which a shipped truth direction must not have seen) into
``DIR/truth.safetensors`` (the domain-general probe; steering vectors are class-mean differences
per layer), and one ``truth-<type>.safetensors`` per truth type with the
same recipe on that type's domains (for steering along domain-specific directions). Every bundle
records its frame, recipe, LODO AUROCs and its in-domain test AUROC.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes import datasets as ds
from probes import sources
from probes.actstore import ActivationStore, model_key
from probes.extract import load_hf
from probes.frames import FRAMES, get_frame
from probes.lodo import (
    NEVER_IN_BUNDLES,
    Candidate,
    DomainData,
    layer_grid,
    mahalanobis_cosines,
    search,
    transfer_matrix,
)
from probes.lodo_bundle import domain_bundles
from probes.lodo_report import write
from probes.recipes import RECIPES
from steering.bundle import save_bundle
from steering.model_info import describe
from steering.models import resolve_model


def add_parser(psub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = psub.add_parser("lodo", help="leave-one-domain-out recipe search over the truth domains")
    p.add_argument("--model", default=None, help="HF folder or packaged alias (default: bundled SmolLM2)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="extraction dtype (bfloat16: ~4x faster on AVX512-BF16 CPUs; match the server's dtype)")
    p.add_argument("--frames", default=",".join(FRAMES), help=f"comma-separated frames ({', '.join(FRAMES)})")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipes")
    p.add_argument("--domains", default=None, help="comma-separated truth domains (default: all)")
    p.add_argument("--layers", default=None, help="comma-separated candidate layers (default: a grid over "
                   "35-85%% of the depth)")
    p.add_argument("--max-per-domain", type=int, default=400, help="seeded subsample of whole groups")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--server", default=None, help="extract through a running server's /v1/activations (URL; "
                   "the model must be the one it serves: its vLLM pass is much faster than HF's on CPU); "
                   "stored apart from local extraction")
    p.add_argument("--key", default=None, help="API key for --server")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--bundles", type=Path, default=None, help="write truth and truth-<type> bundles here")
    p.add_argument("--bundle-exclude", default=",".join(NEVER_IN_BUNDLES),
                   help="comma-separated domains searched and held out but never trained into the bundles (default: "
                   "truthfulqa, the benchmark of the intervention evaluation; '' trains on every domain)")
    p.add_argument("--title", default="Truth probes: leave-one-domain-out")
    p.set_defaults(func=run)


def extractor(folder: Path | str, fingerprint: str, num_layers: int, dtype: torch.dtype, server: str | None,
              key: str | None) -> tuple[Any, Any, ActivationStore]:
    """The model that extracts (local HF, or a running server's ``/v1/activations``), its tokenizer
    and the activation store (server activations are stored apart: vLLM's pass, not HF's)."""
    store_key = model_key(fingerprint, dtype)
    if not server:
        model, tok = load_hf(folder, dtype)
        return model, tok, ActivationStore(store_key)
    from probes.remote import ServerExtractor, server_extractor

    def through_server(m: ServerExtractor, t: Any, texts: Sequence[str], bs: int, progress: bool = False) -> torch.Tensor:
        return m.last_token(t, texts, bs)

    remote, tok = server_extractor(folder, server, key, num_layers)
    return remote, tok, ActivationStore(f"{store_key}-server", extract=through_server)


def load_domains(names: list[str] | None, cap: int, seed: int) -> dict[str, ds.Dataset]:
    every = sources.truth_domains()
    unknown = sorted(set(names or []) - set(every))
    if unknown:
        raise ds.DatasetError(f"unknown truth domain(s) {unknown} (have {', '.join(sorted(every))})")
    return {n: ds.subsample(d, cap, seed) for n, d in every.items() if names is None or n in names}


def bundle_domains(doms: list[DomainData], exclude: str) -> list[DomainData]:
    """The domains a shipped bundle is fitted on: all but the comma-separated ``exclude`` (each a
    known truth domain, whether or not this run searched it)."""
    left_out = set(filter(None, exclude.split(",")))
    unknown = sorted(left_out - set(sources.truth_domain_names()))
    if unknown:
        raise ds.DatasetError(f"--bundle-exclude: unknown truth domain(s) {unknown}")
    kept = [d for d in doms if d.name not in left_out]
    if not kept:
        raise ds.DatasetError("--bundle-exclude leaves no domain to train the bundles on")
    return kept


def domain_data(data: dict[str, ds.Dataset], frame: str, store: ActivationStore, model: Any, tok: Any,
                batch_size: int) -> list[DomainData]:
    fr = get_frame(frame)
    out = []
    for name, d in data.items():
        acts = store.activations(model, tok, [fr.apply(e.text, tok) for e in d.examples], batch_size)
        out.append(DomainData(name, d.truth_type or d.examples[0].truth_type, acts.numpy(),
                              np.array(d.labels()), [e.group for e in d.examples],
                              np.array([bool(e.negated) for e in d.examples])))
    return out


def run(args: argparse.Namespace) -> int:
    folder = resolve_model(args.model)
    info = describe(folder)
    dtype = getattr(torch, args.dtype)
    model, tok, store = extractor(folder, info.fingerprint, info.num_layers, dtype, args.server, args.key)
    data = load_domains(args.domains.split(",") if args.domains else None, args.max_per_domain, args.seed)
    recipes = args.recipes.split(",")
    results: dict[str, list[Candidate]] = {}
    domains: dict[str, list[DomainData]] = {}
    for frame in args.frames.split(","):
        domains[frame] = domain_data(data, frame, store, model, tok, args.batch_size)
        grid = [int(k) for k in args.layers.split(",")] if args.layers else layer_grid(info.num_layers)
        results[frame] = search(domains[frame], recipes, grid, args.seed)
        top = results[frame][0]
        print(f"frame {frame}: {top.recipe} @ {top.label}: LODO val {top.val.mean():.3f}, "
              f"test {top.test.mean():.3f} (pooled {top.test.pooled() or float('nan'):.3f})", flush=True)
    frame = max(results, key=lambda f: results[f][0].val.mean())
    best = results[frame][0]
    doms = domains[frame]
    m, weights = transfer_matrix(doms, best.recipe, best.layers, args.seed)
    pooled = np.concatenate([d.x[:, best.layers[0]] for d in doms])
    cos = mahalanobis_cosines(weights, pooled)
    sizes = {d.name: len(d.y) for d in doms}
    notes = (f"Model `{info.name}` ({args.dtype} activations), seed {args.seed}, at most {args.max_per_domain} "
             f"statements per domain (whole groups); every domain split by group 60/20/20 into train / "
             f"validation / test. A candidate's LODO score for a domain is its AUROC there when fitted on the "
             f"*other* domains' training splits. Frames: {', '.join(results)}.")
    print(write(args.out, args.title, notes, results, (frame, best), m, cos, [d.name for d in doms], sizes))
    if args.bundles:
        for bundle in domain_bundles(bundle_domains(doms, args.bundle_exclude), best, get_frame(frame), info,
                                     data, args.seed):
            path = save_bundle(bundle, args.bundles / f"{bundle.name}.safetensors")
            print(f"{path}: probe layer {bundle.meta.probe.layer if bundle.meta.probe else '-'}, "
                  f"in-domain test AUROC {bundle.meta.metrics.get('heldout_auroc', float('nan')):.3f}")
    return 0
