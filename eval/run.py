"""``python -m eval.run [--limit N] [--out eval/results] [--base URL]``: truthfulness, sycophancy,
side effects, probe quality, gating and selective answering, over truthsteer's public API.

Without ``--base`` a server is started (``truthsteer serve`` on a free port) and stopped at the end.
Configurations the server rejects (4xx, e.g. ``decoding`` on a server started with
``prompt_contrast`` off) are recorded as "unsupported (400)", never scored. DoLa rows are scored from
the server's contrasted prompt logprobs (echo scoring under ``decoding``, docs/decoding.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from eval import configs, data, report, scoring, tasks
from eval.client import Api, Unsupported
from eval.configs import Config

RESULTS = Path(__file__).resolve().parent / "results"


async def _guard(coro: Any) -> Any:
    try:
        return await coro
    except Unsupported as e:
        return {"unsupported": f"unsupported ({e.status})", "error": str(e)}


def pick(cfgs: list[Config], only: set[str] | None) -> list[Config]:
    """The configs named in ``only`` (all when ``None``)."""
    return cfgs if only is None else [c for c in cfgs if c.name in only]


async def evaluate(api: Api, limit: int | None, tokenizer: object, parts: set[str], max_tokens: int,
                   only: set[str] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    neutral = data.neutral_texts(limit)
    ppl: dict[str, float | dict[str, str]] = {}

    async def neutral_ppl(cfg: Config) -> Any:
        if cfg.name not in ppl:
            ppl[cfg.name] = await _guard(tasks.perplexity(api, neutral, cfg))
        return ppl[cfg.name]

    steps = tqdm(desc="eval", total=0, unit="step")

    def todo(n: int) -> None:
        steps.total = (steps.total or 0) + n
        steps.refresh()

    def start(part: str, cfgs: list[Config]) -> list[Config]:
        """The part's configs (``--only`` applied), counted on the progress bar; its result table."""
        chosen = pick(cfgs, only)
        todo(len(chosen))
        res[part] = {}
        return chosen

    if "truthfulqa" in parts:
        items = data.truthfulqa(limit)
        for cfg in start("truthfulqa", configs.truthfulness()):
            row = await _guard(tasks.truthfulqa_mc(api, items, cfg))
            if "unsupported" not in row:
                p = await neutral_ppl(cfg)
                row["ppl_neutral"] = p if isinstance(p, float) else "unsupported"
            res["truthfulqa"][cfg.name] = row
            steps.update()
    if "sycophancy" in parts:
        caa, pools = data.caa_sycophancy_test(limit), data.anthropic_pools(limit)
        for cfg in start("sycophancy", configs.sycophancy()):
            a = await _guard(tasks.ab_behaviour(api, caa, cfg, tokenizer, "CAA test"))
            if "unsupported" in a:
                res["sycophancy"][cfg.name] = a
            else:
                b = await tasks.ab_behaviour(api, pools, cfg, tokenizer, "Anthropic pools")
                p = await neutral_ppl(cfg)
                res["sycophancy"][cfg.name] = {"caa_test": a["p_matching"], "anthropic_pools": b["p_matching"],
                                               "caa_test_frac": a["frac_matching"], "n_caa": a["n"], "n_pools": b["n"],
                                               "ppl_neutral": p}
            steps.update()
    if "sycophancy_gating" in parts:
        caa = data.caa_sycophancy_test(limit)
        for cfg in start("sycophancy_gating", configs.sycophancy_gating()):
            res["sycophancy_gating"][cfg.name] = await _guard(tasks.ab_generated(api, caa, cfg, tokenizer, "CAA letters"))
            steps.update()
    if "behaviours" in parts:
        for cfg in start("behaviours", [configs.truthfulness()[2], configs.sycophancy()[3], configs.Config("none")]):
            brow: dict[str, Any] = {}
            for name in data.CAA_BEHAVIOURS:
                r = await _guard(tasks.ab_behaviour(api, data.caa_behaviour(name, limit), cfg, tokenizer, name))
                brow[name] = r.get("p_matching", r.get("unsupported"))
            res["behaviours"][cfg.name] = brow
            steps.update()
    if "gating" in parts:
        items = [i for i in data.truthfulqa(limit, seed=1) if i.correct_refs and i.incorrect_refs]
        for cfg in start("gating", configs.gating()):
            await _gating(api, items, cfg, max_tokens, res)
            steps.update()
    if "probes" in parts:
        await _probes(api, limit, tokenizer, res, todo, steps.update)
    steps.close()
    return res


async def _gating(api: Api, items: list[Any], cfg: Config, max_tokens: int, res: dict[str, Any]) -> None:
    """One gating config's answers, truthfulness, fluency and interventions (and, for ``none``, the
    selective-answering curve)."""
    try:
        got = await tasks.answers(api, items, cfg, max_tokens)
    except Unsupported as e:
        res["gating"][cfg.name] = {"unsupported": f"unsupported ({e.status})", "error": str(e)}
        return
    probe = [a.probe_mean for a in got if a.probe_mean is not None]
    res["gating"][cfg.name] = {
        "truthful": sum(a.truthful for a in got) / len(got),
        "fluency_ppl": await tasks.fluency(api, items, got),
        "steered_tokens": _mean_or_na([a.steered_tokens for a in got]),
        "contrasted_tokens": _mean_or_na([a.contrasted_tokens for a in got]),
        "answer_words": sum(len(a.text.split()) for a in got) / len(got),
        "probe_mean": _mean_or_na(probe),
        "answers": [a.__dict__ for a in got],
    }
    if cfg.name == "none" and len(probe) == len(got):
        curve = scoring.coverage_curve(probe, [a.truthful for a in got])
        res["selective_curve"] = [(p.coverage, p.accuracy) for p in curve if p.accuracy is not None]
        res["selective"] = {f"{p.threshold:.3f}": {"coverage": p.coverage, "accuracy": p.accuracy}
                            for p in curve if p.accuracy is not None}
        res["selective_area"] = scoring.area_under_coverage(curve)


async def _probes(api: Api, limit: int | None, tokenizer: object, res: dict[str, Any], todo: Any, done: Any) -> None:
    """Probe AUROCs through ``/v1/probes/score`` on the held-out truth sets and the CAA test items."""
    from probes import sources as src

    per_class = None if limit is None else max(50, 10 * limit)  # probes are cheap: AUROC needs items
    sets: list[tuple[str, str, Any]] = [(k, "truth", v) for k, v in data.truth_heldout(None, per_class).items()]
    sets.append(("caa_sycophancy_test", "sycophancy",
                 data.balanced(src.builtin("caa_sycophancy_test", tokenizer), per_class)))
    todo(len(sets))
    res["probes"] = {}
    for set_name, probe_name, dset in sets:
        pr = await _guard(tasks.probe_auroc(api, dset, probe_name))
        res["probes"][set_name] = {"probe": probe_name, **pr}
        done()


def _mean_or_na(values: Sequence[float | None]) -> float | str:
    """Mean of the known values; ``"n/a"`` when the server reported none."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="items per dataset (quick CPU run: 5, about 8 min on 2 cores)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--base", default=None, help="URL of a running server (default: start one)")
    ap.add_argument("--tokenizer", default=None, help="packaged alias or HF folder for the chat template (default: the bundled model)")
    ap.add_argument("--parts", default="truthfulqa,sycophancy,sycophancy_gating,behaviours,gating,probes")
    ap.add_argument("--max-tokens", type=int, default=32, help="answer length for the gating/selective part")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--merge", action="store_true",
                    help="keep what an existing eval-latest.json in --out has (re-run some parts or configs only)")
    ap.add_argument("--only", default=None, help="run only the configs with these names (comma-separated)")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from bench.servers import Server, machine
    from steering.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(args.tokenizer)))  # alias, folder or default
    server = None if args.base else Server.truthsteer()
    base = args.base or server.base  # type: ignore[union-attr]
    t0 = time.time()
    try:
        model = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
        api = Api(base, model, concurrency=args.concurrency)

        async def go() -> dict[str, Any]:
            try:
                return await evaluate(api, args.limit, tokenizer, set(args.parts.split(",")), args.max_tokens,
                                      set(args.only.split(",")) if args.only else None)
            finally:
                await api.close()

        res = asyncio.run(go())
    finally:
        if server:
            server.stop()
    run = {"machine": machine(), "server": f"truthsteer ({model}) at {base}", "limit": args.limit,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": time.time() - t0}
    parts_run = {part: {k: run[k] for k in ("limit", "date", "wall_s")} for part in args.parts.split(",")}
    latest = args.out / "eval-latest.json"
    if args.merge and latest.exists():
        old = json.loads(latest.read_text())
        parts_run = {**old.get("parts_run", {}), **parts_run}
        res = merged(old, res, keep_rows=args.only is not None)
    res |= run | {"parts_run": parts_run}
    args.out.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(res, indent=2, default=_json) + "\n")
    md = report.markdown(res)
    (args.out / "eval-latest.md").write_text(md)
    for p in report.plots(res, args.out):
        print(f"wrote {p}")
    print(md)
    return 0


def merged(old: dict[str, Any], new: dict[str, Any], keep_rows: bool) -> dict[str, Any]:
    """``--merge``: the results of the parts re-run replace the old ones; with ``keep_rows`` (an
    ``--only`` run, which re-ran some configs of a part) the old rows of the other configs stay."""
    def one(k: str, v: Any) -> Any:
        return {**old[k], **v} if keep_rows and isinstance(v, dict) and isinstance(old.get(k), dict) else v

    return {**old, **{k: one(k, v) for k, v in new.items()}}


def _json(v: Any) -> Any:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    raise TypeError(type(v))


if __name__ == "__main__":
    raise SystemExit(main())
