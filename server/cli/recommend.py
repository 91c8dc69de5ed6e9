"""``truthsteer directions recommend``: record a measured intervention in a bundle's metadata.

Sets ``recommended_steering`` (a request's ``steering`` list, validated here against the bundle
itself and any other bundles named with ``--with``, exactly as the server validates it at load),
its notes, and the numbers behind it as ``metrics["recommended.<name>"]``; the vectors and every
other field are kept. ``--clear`` removes a recommendation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steering.bundle import load_bundle, save_bundle
from steering.engine import check_recommendations


def _recommend(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    ops = [] if args.clear else json.loads(args.steering)
    metrics = {k: v for k, v in bundle.meta.metrics.items() if not k.startswith("recommended.")}
    for item in args.metric or []:
        key, _, value = item.partition("=")
        metrics[f"recommended.{key}"] = float(value)
    meta = bundle.meta.model_copy(update={"recommended_steering": ops, "metrics": metrics,
                                          "recommended_steering_notes": "" if args.clear else args.notes})
    updated = type(bundle)(meta=meta, vectors=bundle.vectors, probe_weight=bundle.probe_weight, source=str(args.bundle),
                           head_vectors=bundle.head_vectors)
    others = {b.name: b for b in (load_bundle(p) for p in args.with_ or [])}
    check_recommendations({**others, updated.name: updated}, bundle.meta.model.num_layers)
    save_bundle(updated, args.out or args.bundle)
    print(f"{args.out or args.bundle}: recommended_steering = {json.dumps(ops)}")
    return 0


def add_parser(dsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = dsub.add_parser("recommend", help="record a measured intervention (recommended_steering) in a bundle")
    r.add_argument("bundle", type=Path)
    r.add_argument("--steering", default="[]", help="JSON list of steering ops, as in a request")
    r.add_argument("--notes", default="", help="how it was chosen and measured")
    r.add_argument("--metric", action="append", help="NAME=VALUE, stored as metrics['recommended.NAME']")
    r.add_argument("--with", dest="with_", action="append", type=Path, help="another bundle the ops name")
    r.add_argument("--clear", action="store_true")
    r.add_argument("--out", type=Path, default=None, help="write here instead of in place")
    r.set_defaults(func=_recommend)
