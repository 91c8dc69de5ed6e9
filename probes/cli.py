"""``truthsteer probes train | eval | compare``: train, evaluate and compare direction bundles.

Dataset specs (``--dataset``): a built-in name (:mod:`probes.sources`), a user ``.csv``/``.jsonl``
file (``text,label[,group]``), several joined with ``+``, ``heldout:PRESET[:PART]`` -- the held-out
group split of a preset's training data (only the items of ``PART`` with a part name) -- or
``preset:PRESET:PART``, the preset's (subsampled) training file ``PART``. A spec may end in ``@N``:
at most ``N`` items (seeded, whole groups) instead of ``--max-items``.

Activations of the preset specs come from the preset's cached train/test activations when those
are on disk (``truthsteer probes train --preset`` leaves them there), so they cost nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from probes import datasets as ds
from probes import sources
from probes.evaluate import evaluate, markdown_table
from probes.extract import activation_path, cached_activations, load_hf
from probes.frames import framed
from probes.methods import METHODS, PROBE_C
from probes.presets import PRESETS, Preset
from probes.report import Split, compare, write
from probes.train import build_bundle
from steering.bundle import DatasetRef, load_bundle, save_bundle
from steering.model_info import ModelInfo, describe
from steering.models import resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("probes", help="train, evaluate and compare direction bundles")
    psub = p.add_subparsers(dest="probes_cmd", required=True)

    t = psub.add_parser("train", help="train a bundle (steering direction + calibrated probe)")
    _common(t)
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS), help="a shipped bundle's recipe")
    src.add_argument("--dataset", help="training data spec (see `truthsteer probes --help`)")
    t.add_argument("--test-dataset", default=None, help="held-out data (default: a group split)")
    t.add_argument("--method", choices=METHODS, default=None, help="steering direction (default mean-diff)")
    t.add_argument("--name", default=None, help="bundle name (default: preset or output file stem)")
    t.add_argument("--kind", default="custom", help="bundle kind for --dataset (truth, sycophancy, custom)")
    t.add_argument("--strength", type=float, default=1.0, help="recommended strength")
    t.add_argument("--test-frac", type=float, default=0.2)
    t.add_argument("--probe-c", type=float, default=None,
                   help=f"inverse L2 strength of the logistic probe (default: the preset's, else {PROBE_C:g})")
    t.add_argument("--select-frac", type=float, default=None,
                   help="choose the probe layer on this fraction of the training groups instead of on the "
                   "held-out data (default: the preset's, else off)")
    t.add_argument("--max-per-dataset", type=int, default=None,
                   help="seeded subsample of each training file, whole groups (with --preset: instead of "
                   "the preset's own, e.g. to fit a larger model's CPU budget)")
    t.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    t.set_defaults(func=_train)

    e = psub.add_parser("eval", help="score a bundle's probe and directions on datasets")
    _common(e)
    e.add_argument("--bundle", type=Path, required=True)
    e.add_argument("--dataset", required=True, help="comma-separated dataset specs")
    e.add_argument("--max-items", type=int, default=400, help="seeded subsample per dataset (0: all)")
    _preset_size(e)
    e.add_argument("--out", type=Path, default=None, help="write the table here (.md) and as .json")
    e.set_defaults(func=_eval)

    c = psub.add_parser("compare", help="geometry and transfer report across datasets")
    _common(c)
    c.add_argument("--datasets", required=True, help="comma-separated dataset specs")
    c.add_argument("--method", choices=METHODS, default="logistic", help="direction for transfer and geometry")
    c.add_argument("--layer", type=int, default=None, help="layer for the geometry (default: best mean)")
    c.add_argument("--max-items", type=int, default=400, help="seeded subsample per dataset (0: all)")
    c.add_argument("--test-frac", type=float, default=0.3)
    c.add_argument("--title", default="Direction geometry and transfer")
    _preset_size(c)
    c.add_argument("--out", type=Path, required=True, help="output folder (report.md + PNGs)")
    c.set_defaults(func=_compare)


    lc = psub.add_parser("curve", help="learning curve: test AUROC of a probe vs number of training groups")
    _common(lc)
    lc.add_argument("--dataset", required=True, help="training data spec")
    lc.add_argument("--test-dataset", required=True, help="test data spec")
    lc.add_argument("--sizes", required=True, type=_csv(int),
                    help="comma-separated numbers of training groups, e.g. 75,150,300")
    lc.add_argument("--probe-c", default=[PROBE_C, 1.0], type=_csv(float),
                    help=f"comma-separated inverse L2 strengths (default {PROBE_C:g},1)")
    lc.add_argument("--select-frac", type=float, default=0.25, help="validation split for the layer choice")
    lc.add_argument("--title", default="Probe learning curve")
    lc.add_argument("--out", type=Path, required=True, help="output folder (curve.md / .json / .png)")
    lc.set_defaults(func=_curve)

    from probes.heads_cli import add_parser as add_heads
    from probes.lodo_cli import add_parser as add_lodo

    add_lodo(psub)
    add_heads(psub)


def _csv(kind: type[float] | type[int]) -> Any:
    """argparse type: comma-separated numbers (a bad item is argparse's usage error naming it)."""

    def parse(text: str) -> list[float] | list[int]:
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


def _preset_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-per-dataset", type=int, default=None,
                   help="the preset subsample the bundle was trained with (`train --preset P "
                   "--max-per-dataset N`), so heldout:P / preset:P specs are that run's exact splits")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF folder or packaged alias (default: bundled SmolLM2)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="extraction dtype: match the server's (bfloat16 ~4x faster on AVX512-BF16 CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--server", default=None, help="extract through a running server's /v1/activations (URL; "
                   "the model must be the one it serves); cached apart from local extraction")
    p.add_argument("--key", default=None, help="API key for --server")


class _Ctx:
    """The model, tokenizer and fingerprint, loaded once per command."""

    def __init__(self, model: str | None, batch_size: int, max_per_dataset: int | None = None,
                 server: str | None = None, key: str | None = None, dtype: str = "float32") -> None:
        folder = resolve_model(model)
        self.max_per_dataset = max_per_dataset  # overrides the presets' own subsample size
        self.info: ModelInfo = describe(folder)
        # caches of another source or dtype are other files (local float32 keeps the historical keys)
        self.cache_key = self.info.fingerprint + ("-server" if server else "") + ("" if dtype == "float32" else f"-{dtype}")
        if server:
            from probes.remote import server_extractor

            self.model: Any
            self.model, self.tok = server_extractor(folder, server, key, self.info.num_layers)
        else:
            self.model, self.tok = load_hf(folder, getattr(torch, dtype))
        self.bs = batch_size

        self.known: dict[str, torch.Tensor] = {}  # text -> activations already loaded in this command

    def acts(self, data: ds.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        texts = data.texts()
        if texts and all(t in self.known for t in texts):
            a = torch.stack([self.known[t] for t in texts])
        else:
            a = cached_activations(self.model, self.tok, texts, self.cache_key, data.digest(), self.bs)
            self.known.update(zip(texts, a, strict=True))
        return a, torch.tensor(data.labels())

    def preload(self, data: ds.Dataset) -> None:
        """Remember ``data``'s activations if they are cached on disk (no extraction)."""
        path = activation_path(self.cache_key, data.digest())
        if path.is_file():
            self.acts(data)

    def preload_preset(self, preset: Preset) -> None:
        """Remember the cached activations of a preset's whole files, so that its subsamples and
        splits cost nothing when some other command extracted the whole file."""
        for name in (*preset.train, *preset.test):
            self.preload(sources.builtin(name, self.tok))


def preset_sets(preset: Preset, tok: Any, seed: int, test_frac: float,
                max_per_dataset: int | None = None) -> tuple[list[ds.Dataset], ds.Dataset, ds.Dataset]:
    """(subsampled parts, train set, test set) of a preset, exactly as ``train --preset`` uses them.

    ``max_per_dataset`` replaces the preset's subsample size. Subsamples are prefixes of one seeded
    group order and the split hashes each group, so a smaller run's held-out groups are held out
    in the full preset too (and its training groups are on the full preset's training side).
    """
    size = max_per_dataset if max_per_dataset is not None else preset.max_per_dataset
    parts = [preset_part(preset, n, tok, seed, test_frac, size, "train") for n in preset.train]
    train_set = ds.concat("+".join(preset.train), parts)
    if preset.test:
        test_set = ds.concat("+".join(preset.test), [sources.builtin(n, tok) for n in preset.test])
        return parts, train_set, test_set
    tr, te = ds.split_dataset(train_set, test_frac, seed)
    return parts, tr, te


def preset_part(preset: Preset, part: str, tok: Any, seed: int, test_frac: float, size: int | None,
                side: str) -> ds.Dataset:
    """One training file of a preset, subsampled: its held-out group split for ``side="test"``; for
    ``side="train"`` the training side of the parts the preset splits (``Preset.split``), else all."""
    one = ds.subsample(sources.builtin(part, tok), size, seed)
    if side == "test" or part in preset.split:
        one = ds.split_dataset(one, test_frac, seed)[0 if side == "train" else 1]
        one = ds.Dataset(part, one.examples, one.path, one.license)
    return one


def load_spec(spec: str, ctx: _Ctx, seed: int, max_items: int | None) -> ds.Dataset:
    spec, at, n = spec.partition("@")
    if at and not n.isdigit():
        raise ds.DatasetError(f"{spec}@{n}: expected a number of items after @")
    kind, _, rest = spec.partition(":")
    if at:
        max_items = int(n)
    elif kind == "heldout":
        max_items = None  # a held-out split is measured whole unless asked otherwise
    if kind in ("heldout", "preset") and rest:
        name, _, part = rest.partition(":")
        if name not in PRESETS:
            raise ds.DatasetError(f"{spec}: unknown preset {name!r} (have {sorted(PRESETS)})")
        preset = PRESETS[name]
        _, train, test = preset_sets(preset, ctx.tok, seed, 0.2, ctx.max_per_dataset)
        ctx.preload_preset(preset)
        ctx.preload(train)
        ctx.preload(test)
        if part and part not in preset.train:
            raise ds.DatasetError(f"{spec}: {part!r} is not a training part of {name} ({', '.join(preset.train)})")
        if kind == "preset" and not part:
            raise ds.DatasetError(f"{spec}: name the part, preset:{name}:PART")
        if not part:
            return ds.subsample(test, max_items or None, seed)
        size = ctx.max_per_dataset if ctx.max_per_dataset is not None else preset.max_per_dataset
        if kind == "heldout" and preset.test and part not in preset.split:
            raise ds.DatasetError(f"{spec}: {name} trains on all of {part!r} (its test set is "
                                  f"{'+'.join(preset.test)}); nothing of it is held out")
        one = preset_part(preset, part, ctx.tok, seed, 0.2, size, "test" if kind == "heldout" else "train")
        return ds.subsample(ds.Dataset(spec, one.examples, one.path, one.license), max_items or None, seed)
    return ds.subsample(sources.load(spec, ctx.tok), max_items or None, seed)


def _train(args: argparse.Namespace) -> int:
    ctx = _Ctx(args.model, args.batch_size, server=args.server, key=args.key, dtype=args.dtype)
    preset: Preset | None = None
    if args.preset:
        preset = PRESETS[args.preset]
        parts, train_set, test_set = preset_sets(preset, ctx.tok, args.seed, args.test_frac, args.max_per_dataset)
        ctx.preload_preset(preset)
        name, kind, desc, strength = preset.name, preset.kind, preset.description, preset.recommended_strength
    else:
        parts = [ds.subsample(sources.load(s, ctx.tok), args.max_per_dataset, args.seed) for s in args.dataset.split("+")]
        full = ds.concat(args.dataset, parts)
        ds.check_trainable(full)
        if args.test_dataset:
            train_set, test_set = full, sources.load(args.test_dataset, ctx.tok)
        else:
            train_set, test_set = ds.split_dataset(full, args.test_frac, args.seed)
        name, kind, desc, strength = args.name or args.out.stem, args.kind, f"trained on {args.dataset}", args.strength
    ds.check_trainable(train_set)
    if not test_set.examples:
        raise ds.DatasetError(f"{test_set.name}: the held-out split is empty (more groups or a larger --test-frac)")
    xtr, ytr = ctx.acts(train_set)
    xte, yte = ctx.acts(test_set)
    refs = [DatasetRef(name=d.name, path=d.path, license=d.license, rows=len(d.examples)) for d in parts]
    bundle = build_bundle(
        name=args.name or name, kind=kind, model=ctx.info, train=xtr, ytr=ytr, test=xte, yte=yte,
        datasets=refs, seed=args.seed, recommended_strength=strength, description=desc,
        method=args.method or "mean-diff", groups=[e.group for e in train_set.examples],
        probe_c=args.probe_c if args.probe_c is not None else (preset.probe_c if preset else PROBE_C),
        select_frac=args.select_frac if args.select_frac is not None else (preset.select_frac if preset else None),
    )
    save_bundle(bundle, args.out)
    m = bundle.meta.metrics
    auc = m.get("heldout_auroc")
    print(
        f"{args.out}: probe layer {int(m['probe_layer'])}, held-out AUROC "
        f"{'n/a' if auc is None else f'{auc:.3f}'}, accuracy {m['heldout_accuracy']:.3f}, "
        f"recommended layers {bundle.meta.recommended_layers}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    ctx = _Ctx(args.model, args.batch_size, args.max_per_dataset, args.server, args.key, args.dtype)
    bundle = load_bundle(args.bundle, ctx.info)
    frame = bundle.meta.probe.frame if bundle.meta.probe else None
    results = []
    for spec in args.dataset.split(","):
        data = load_spec(spec, ctx, args.seed, args.max_items)
        if not data.examples:
            raise ds.DatasetError(f"{spec}: no examples")
        data = framed(data, frame, ctx.tok)  # read where the probe was trained (and is served)
        x, y = ctx.acts(data)
        results.append(evaluate(bundle, x, y.tolist(), [e.group for e in data.examples], spec))
    table = markdown_table([r.row() for r in results])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(f"# {bundle.name}: evaluation\n\n{table}")
        payload = [{**r.__dict__, "direction_auroc": {str(k): v for k, v in r.direction_auroc.items()}} for r in results]
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    return 0


def _compare(args: argparse.Namespace) -> int:
    ctx = _Ctx(args.model, args.batch_size, args.max_per_dataset, args.server, args.key, args.dtype)
    splits = []
    for spec in args.datasets.split(","):
        data = load_spec(spec, ctx, args.seed, args.max_items)
        ds.check_trainable(data)
        x, y = ctx.acts(data)
        tr, te = ds.split_indices([e.group for e in data.examples], args.test_frac, args.seed)
        itr, ite = torch.tensor(tr), torch.tensor(te)
        splits.append(Split(data.name, x[itr], y[itr], [data.examples[i].group for i in tr], x[ite], y[ite]))
    rep = compare(splits, args.method, args.seed, args.layer)
    notes = (
        f"Model `{ctx.info.name}`; "
        + (f"each dataset subsampled to at most {args.max_items} items unless its spec says `@N`" if args.max_items
           else "datasets used whole unless a spec says `@N` (at most N items)")
        + f" (seed {args.seed}, whole groups); {', '.join(f'{s.name}: {len(s.ytr)} train / {len(s.yte)} held out' for s in splits)}; "
        f"split by group with test fraction {args.test_frac}."
    )
    path = write(rep, args.out, args.title, notes)
    print(path)
    return 0


def _curve(args: argparse.Namespace) -> int:
    from probes.curve import learning_curve
    from probes.curve import write as write_curve

    ctx = _Ctx(args.model, args.batch_size, server=args.server, key=args.key, dtype=args.dtype)
    train_set, test_set = (load_spec(s, ctx, args.seed, 0) for s in (args.dataset, args.test_dataset))
    ds.check_trainable(train_set)
    x, y = ctx.acts(train_set)
    xte, yte = ctx.acts(test_set)
    points = learning_curve(x, y, [e.group for e in train_set.examples], xte, yte,
                            [e.group for e in test_set.examples], args.sizes, args.probe_c, args.seed, args.select_frac)
    notes = (f"Model `{ctx.info.name}`; training data `{args.dataset}` ({len(train_set.examples)} examples), test "
             f"`{args.test_dataset}` ({len(test_set.examples)}); seed {args.seed}; probe layer chosen on a "
             f"{args.select_frac:g} validation split of each size's groups, refitted on all of them.")
    print(write_curve(points, args.out, args.title, notes))
    return 0
