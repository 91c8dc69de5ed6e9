"""``truthsteer`` command line: models, directions, offline generation, probes, serving."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from steering.errors import TruthsteerError


def _models_prepare(args: argparse.Namespace) -> int:
    from steering.models import resolve_model

    print(resolve_model(args.model))
    return 0


def _directions_list(args: argparse.Namespace) -> int:
    from steering.bundle import load_bundle
    from steering.engine import bundle_files

    for f in bundle_files([args.dir]):
        b = load_bundle(f)
        m = b.meta
        probe = f"probe@{m.probe.layer}" if m.probe else "no probe"
        print(
            f"{m.name:<14} {m.kind:<11} layers {len(m.layers):>3}  recommended {m.recommended_layers} "
            f"x{m.recommended_strength:g}  {probe}  model {m.model.name}  {json.dumps(m.metrics)}"
        )
    return 0


def _import_gguf(args: argparse.Namespace) -> int:
    from steering.bundle import save_bundle
    from steering.gguf_io import import_gguf
    from steering.model_info import describe
    from steering.models import resolve_model

    info = describe(resolve_model(args.model))
    bundle = import_gguf(args.file, info, args.name, args.kind)
    print(save_bundle(bundle, args.out))
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from steering.bundle import load_bundle
    from steering.gguf_io import export_gguf

    print(export_gguf(load_bundle(args.bundle), args.out, args.strength))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from vllm import SamplingParams

    from steering.llm import SteeredLLM, to_ops

    steer = to_ops(args.steer, "steer")  # shorthand errors before the (slow) engine start
    llm = SteeredLLM(model=args.model, directions=args.directions, enforce_eager=args.eager)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    prompts = args.prompt
    if args.chat:
        from steering.chat import user_turn

        tok = llm.llm.get_tokenizer()
        prompts = [user_turn(p, tok) for p in prompts]
    outs = llm.generate(prompts, params, steering=steer or None)
    for p, o in zip(args.prompt, outs, strict=True):
        print(json.dumps({"prompt": p, "steering": args.steer, "text": o.outputs[0].text}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.lifecycle import graceful_server
    from server.settings import load_settings

    settings = load_settings(args.config, model=args.model, host=args.host, port=args.port)
    app = create_app(settings)
    # SIGTERM drains (server/lifecycle.py); uvicorn's own wait afterwards is bounded too
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s / 2)))
    graceful_server(config, app.state.lifecycle).run()
    stop_children()
    return int(app.state.lifecycle.exit_code)  # 1 after an engine death, so that supervisors restart it


def stop_children(grace_s: float = 10.0) -> None:
    """Stop whatever engine processes outlive the server's shutdown. After an engine death (a worker
    killed, e.g. by the OOM killer) vLLM's engine core can stay up; re-parented to init it would hold
    its memory after the server exits. Terminate, then kill after ``grace_s``."""
    import psutil

    kids = psutil.Process().children(recursive=True)
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.terminate()
    _gone, alive = psutil.wait_procs(kids, timeout=grace_s)
    for k in alive:
        with contextlib.suppress(psutil.Error):
            k.kill()


def build_parser() -> argparse.ArgumentParser:
    from probes.cli import add_parser as add_probes
    from steering.models import PACKAGED_MODELS

    model_help = f"packaged alias ({', '.join(PACKAGED_MODELS)}; default the first) or local HF folder"
    ap = argparse.ArgumentParser(prog="truthsteer", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("models", help="prepare models")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    mp = msub.add_parser("prepare", help="convert a packaged GGUF model once (assembling split ones); print its folder")
    mp.add_argument("--model", default=None, help=model_help)
    mp.set_defaults(func=_models_prepare)

    d = sub.add_parser("directions", help="inspect, import and export direction bundles")
    dsub = d.add_subparsers(dest="directions_cmd", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("--dir", default=str(Path(__file__).resolve().parents[2] / "directions"))
    dl.set_defaults(func=_directions_list)
    di = dsub.add_parser("import-gguf", help="llama.cpp / repeng control vector -> bundle")
    di.add_argument("file")
    di.add_argument("--name", required=True)
    di.add_argument("--kind", default="custom")
    di.add_argument("--model", default=None)
    di.add_argument("--out", required=True)
    di.set_defaults(func=_import_gguf)
    from server.cli.recommend import add_parser as add_recommend

    add_recommend(dsub)
    from server.cli.push import add_parsers as add_push

    add_push(dsub)  # push / delete on a running server
    de = dsub.add_parser("export-gguf", help="bundle -> llama.cpp control vector")
    de.add_argument("bundle")
    de.add_argument("out")
    de.add_argument("--strength", type=float, default=1.0)
    de.set_defaults(func=_export_gguf)

    g = sub.add_parser("generate", help="offline generation with steering")
    g.add_argument("prompt", nargs="+")
    g.add_argument("--steer", action="append", default=[], help="e.g. truth:+4, truth:-2@10-14, truth:ablate")
    g.add_argument("--model", default=None, help=model_help)
    g.add_argument("--directions", nargs="*", default=[str(Path(__file__).resolve().parents[2] / "directions")])
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    g.add_argument("--eager", action="store_true", help="enforce_eager (skip compilation)")
    g.set_defaults(func=_generate)

    sv = sub.add_parser("serve", help="OpenAI-compatible server (settings: TRUTHSTEER_* env or --config YAML)")
    sv.add_argument("--config", default=None, help="YAML settings file")
    sv.add_argument("--model", default=None, help=model_help + " (directions/<alias>/ holds an opt-in model's bundles)")
    sv.add_argument("--host", default=None)
    sv.add_argument("--port", type=int, default=None)
    sv.set_defaults(func=_serve)

    add_probes(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TruthsteerError as e:
        print(f"truthsteer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
