"""``truthsteer probes ...``: train direction bundles from datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from probes import datasets as ds
from probes.extract import cached_activations, load_hf
from probes.presets import PRESETS
from probes.train import build_bundle
from steering.bundle import DatasetRef, save_bundle
from steering.model_info import describe
from steering.models import resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("probes", help="train and evaluate direction bundles")
    psub = p.add_subparsers(dest="probes_cmd", required=True)
    t = psub.add_parser("train", help="train a bundle (difference of means + calibrated probe)")
    t.add_argument("--model", default=None, help="HF folder or packaged alias (default: bundled SmolLM2)")
    t.add_argument("--preset", choices=sorted(PRESETS), required=True)
    t.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--test-frac", type=float, default=0.2)
    t.add_argument("--batch-size", type=int, default=16)
    t.set_defaults(func=_train)


def _acts(model: object, tok: object, data: ds.Dataset, fp: str, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    acts = cached_activations(model, tok, [e.text for e in data.examples], fp, data.digest(), bs)
    return acts, torch.tensor([e.label for e in data.examples])


def _train(args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    folder = resolve_model(args.model)
    info = describe(folder)
    model, tok = load_hf(folder)
    parts = [ds.subsample(ds.builtin(n, tok), preset.max_per_dataset, args.seed) for n in preset.train]
    train_set = ds.concat("+".join(preset.train), parts)
    if preset.test:
        test_set = ds.concat("+".join(preset.test), [ds.builtin(n, tok) for n in preset.test])
    else:
        tr, te = ds.group_split(train_set.examples, args.test_frac, args.seed)
        test_set = ds.Dataset(train_set.name + ":test", te, train_set.path, train_set.license)
        train_set = ds.Dataset(train_set.name + ":train", tr, train_set.path, train_set.license)
    xtr, ytr = _acts(model, tok, train_set, info.fingerprint, args.batch_size)
    xte, yte = _acts(model, tok, test_set, info.fingerprint, args.batch_size)
    refs = [DatasetRef(name=d.name, path=d.path, license=d.license, rows=len(d.examples)) for d in parts]
    bundle = build_bundle(
        name=preset.name,
        kind=preset.kind,
        model=info,
        train=xtr,
        ytr=ytr,
        test=xte,
        yte=yte,
        datasets=refs,
        seed=args.seed,
        recommended_strength=preset.recommended_strength,
        description=preset.description,
    )
    save_bundle(bundle, args.out)
    m = bundle.meta.metrics
    print(
        f"{args.out}: probe layer {int(m['probe_layer'])}, held-out AUROC {m['heldout_auroc']:.3f}, "
        f"accuracy {m['heldout_accuracy']:.3f}, recommended layers {bundle.meta.recommended_layers}"
    )
    return 0
