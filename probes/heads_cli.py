"""``truthsteer probes heads``: train an ITI-style head-vector bundle on the truth domains.

Statements of the chosen truth domains (:func:`probes.sources.truth_domains`, seeded subsamples of
whole groups) are read in a frame (:mod:`probes.frames`) at their last token; each decoder layer's
``o_proj`` input is extracted with HF (:func:`probes.extract.last_token_head_inputs`, cached per text
in :class:`probes.actstore.ActivationStore` under its own key). Groups are split into train /
validation / test (test first, then validation inside the rest, both by seeded group hashes);
:func:`probes.heads.fit_heads` ranks the heads on validation and builds the vectors from train;
the test split only reports the top-K ensemble's accuracy. The bundle is head-only (steer it with
``"site": "attn_heads"``); ``--strength`` is its recommended ITI ``alpha`` (not tuned here: sweep it
with the eval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from probes import datasets as ds
from probes import sources
from probes.actstore import ActivationStore, model_key
from probes.extract import last_token_head_inputs, load_hf
from probes.frames import FRAMES, get_frame
from probes.heads import ensemble_accuracy, fit_heads, to_bundle
from probes.lodo_cli import load_domains
from steering.bundle import DatasetRef, save_bundle
from steering.model_info import describe
from steering.models import resolve_model

DEFAULT_DOMAINS = "cities,history_geography,science,everyday,definitions"


def add_parser(psub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = psub.add_parser("heads", help="ITI-style head vectors: per-head probes, top-K heads, mass-mean shifts")
    p.add_argument("--model", default=None, help="HF folder or packaged alias (default: bundled SmolLM2)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--domains", default=DEFAULT_DOMAINS, help="comma-separated truth domains")
    p.add_argument("--max-per-domain", type=int, default=300, help="seeded subsample of whole groups")
    p.add_argument("--frame", default="raw", help=f"reading frame ({', '.join(FRAMES)})")
    p.add_argument("--top-k", default="auto", help="heads to keep, or 'auto': the K in {1,2,4,...,64} whose "
                   "ensemble is most accurate on validation")
    p.add_argument("--strength", type=float, default=5.0, help="recommended ITI alpha (units of each head's sigma)")
    p.add_argument("--probe-c", type=float, default=1.0, help="inverse L2 strength of the per-head probes")
    p.add_argument("--test-frac", type=float, default=0.2)
    p.add_argument("--val-frac", type=float, default=0.25, help="of the non-test groups")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--truthfulqa-fold", type=int, choices=(1, 2), default=None,
                   help="keep only the truthfulqa domain's answers to this cross-validation fold's questions "
                        "(eval.truthfulqa_cv), so that the bundle can be evaluated on the other fold")
    p.add_argument("--name", default="truth-heads")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors bundle")
    p.add_argument("--report", type=Path, default=None, help="write per-head accuracies and the K scores (JSON)")
    p.set_defaults(func=run)


def splits(groups: list[str], test_frac: float, val_frac: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test indices by group (no group on two sides)."""
    rest, test = ds.split_indices(groups, test_frac, seed)
    tr, va = ds.split_indices([groups[i] for i in rest], val_frac, seed, salt="heads-val")
    return [rest[i] for i in tr], [rest[i] for i in va], test


def check(args: argparse.Namespace) -> None:
    """Refuse flag combinations that would silently train something else than asked."""
    if args.truthfulqa_fold and "truthfulqa" not in args.domains.split(","):
        raise SystemExit(f"--truthfulqa-fold {args.truthfulqa_fold}: needs the truthfulqa domain in --domains "
                         f"(got {args.domains!r})")


def run(args: argparse.Namespace) -> int:
    check(args)
    folder = resolve_model(args.model)
    info = describe(folder)
    dtype = getattr(torch, args.dtype)
    model, tok = load_hf(folder, dtype)
    domains = load_domains(args.domains.split(","), args.max_per_domain, args.seed)
    if args.truthfulqa_fold:
        domains["truthfulqa"] = sources.truthfulqa_fold(domains["truthfulqa"], args.truthfulqa_fold)
    data = ds.concat("truth-heads", domains.values())
    frame = get_frame(args.frame)
    store = ActivationStore(model_key(info.fingerprint, dtype) + "-oproj", extract=last_token_head_inputs)
    acts = store.activations(model, tok, [frame.apply(e.text, tok) for e in data.examples], args.batch_size)
    x = acts.numpy().reshape(len(acts), info.num_layers, info.num_heads, info.head_dim)
    y = np.array(data.labels())
    train, val, test = splits([e.group for e in data.examples], args.test_frac, args.val_frac, args.seed)
    k = None if args.top_k == "auto" else int(args.top_k)
    fit = fit_heads(x, y, train, val, k, args.seed, args.probe_c)
    test_acc = ensemble_accuracy(x, y, train, test, fit.selected)
    val_acc = ensemble_accuracy(x, y, train, val, fit.selected)
    metrics = {"heads.k": float(len(fit.selected)), "heads.val_accuracy": val_acc, "heads.test_accuracy": test_acc,
               "heads.best_head_val_accuracy": float(fit.accuracy.max()), "n_train": float(len(train)),
               "n_val": float(len(val)), "n_test": float(len(test))}
    fold = f" (TruthfulQA fold {args.truthfulqa_fold} questions only)" if args.truthfulqa_fold else ""
    notes = (f"frame {frame.name}; domains {args.domains}{fold}, at most {args.max_per_domain} each; per-head logistic "
             f"probes C={args.probe_c:g}; K {'chosen on validation' if k is None else 'given'}; vectors sigma * "
             "unit(mean true - mean false) on the training split; strength not tuned")
    bundle = to_bundle(fit, name=args.name, info=info, strength=args.strength,
                       datasets=[DatasetRef(name=data.name, path=data.path, license=data.license, rows=len(y))],
                       seed=args.seed, metrics=metrics, notes=notes)
    path = save_bundle(bundle, args.out)
    print(f"{path}: {len(fit.selected)} heads {fit.selected[:8]}{' ...' if len(fit.selected) > 8 else ''}; "
          f"best head val acc {fit.accuracy.max():.3f}; top-K ensemble val {val_acc:.3f}, test {test_acc:.3f}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({"metrics": metrics, "k_scores": fit.k_scores,
                                           "selected": fit.selected, "accuracy": fit.accuracy.tolist()}, indent=1))
    return 0
