"""TruthfulQA v0 MC1/MC2 with two-fold cross-validation by question, through the API (issue 22).

Every candidate configuration scores all 817 questions once (per-question MC1 and MC2, cached in
``OUT/scores/`` by the fields each question is sent (:mod:`eval.score_cache`), so a rerun, a larger
sample or a configuration sharing a fold's fields computes only what is missing); the
choice is then pure arithmetic (:func:`cross_validate`): on each fold the configuration with the
best mean on the *other* fold is chosen, and only its score on the reported fold counts. Fold 1
is questions 1-409 of the v0 file order, fold 2 questions 410-817. The gain over no intervention
is a paired difference over the reported fold's questions, with its standard error.

Formats: ``chat`` (default for instruct models: the question as the user's turn, each option as
the assistant's reply, zero-shot) or ``primer`` (the paper's six-shot QA primer). The chat form is
the instruct models' own convention and about ten times cheaper: echo scoring asks for prompt
log-probabilities, which vLLM computes without the prefix cache, so the 300-token primer would be
recomputed for every one of the ~8,000 options.

    python -m eval.truthfulqa_cv --base http://127.0.0.1:8000 --tokenizer qwen2.5-coder-1.5b-instruct \
        --configs @eval/candidates/truthfulqa-qwen2.5-coder-1.5b-instruct.json --per-fold 150 \
        --out eval/results/truthfulqa-cv-qwen2.5-coder-1.5b-instruct
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from eval import scoring
from eval.client import Api
from eval.data import MCItem, neutral_texts, qa_context, truthfulqa
from eval.score_cache import ScoreCache
from eval.scoring import mean_se
from eval.truthfulqa_gen import GenResult, generated
from eval.truthfulqa_gen import markdown as gen_markdown
from probes.biased_belief import Estimate
from probes.sources import TRUTHFULQA_FOLD_SPLIT
from steering.chat import user_turn

FOLD_SPLIT = TRUTHFULQA_FOLD_SPLIT  # questions 1-409 (of v0/mc_task.jsonl) are fold 1, 410-817 fold 2
METRICS = ("MC1", "MC2")


@dataclass(frozen=True)
class FoldResult:
    """One reported fold: the configuration chosen on the other fold, and its numbers here."""

    fold: int  # 1 or 2, the fold reported
    chosen: str
    metric: str
    train_value: float  # the chosen configuration's mean on the fold it was chosen on
    baseline: Estimate
    chosen_value: Estimate
    gain: Estimate  # paired: chosen - baseline, per question of the reported fold


def folds(n: int, split: int = FOLD_SPLIT) -> list[int]:
    """Fold (1 or 2) of each question in file order."""
    return [1 if i < split else 2 for i in range(n)]


def per_fold_sample(n: int, per_fold: int | None, seed: int = 0, split: int = FOLD_SPLIT) -> list[int]:
    """Indices of the questions to score, in file order: all of them, or a seeded sample of
    ``per_fold`` questions from each fold (TruthfulQA's file is grouped by category, so a prefix
    would not be a sample)."""
    if per_fold is None:
        return list(range(n))
    rng = random.Random(seed)
    picked = [*rng.sample(range(split), min(per_fold, split)), *rng.sample(range(split, n), min(per_fold, n - split))]
    return sorted(picked)


def cross_validate(scores: Mapping[str, Sequence[float]], fold_of: Sequence[int], baseline: str = "none",
                   metric: str = "MC1", eligible: Mapping[int, set[str]] | None = None) -> list[FoldResult]:
    """Two-fold choice by one metric. ``scores`` maps each configuration (the baseline included)
    to its per-question values, in the order of ``fold_of``. Ties go to the configuration listed
    first, so list the baseline first to prefer doing nothing. ``eligible[fold]``, when given, names
    the configurations that may be reported on ``fold`` (e.g. those within a perplexity budget
    under that fold's fields); the baseline always may."""
    if baseline not in scores:
        raise ValueError(f"the baseline {baseline!r} has no scores")
    for name, vals in scores.items():
        if len(vals) != len(fold_of):
            raise ValueError(f"{name}: {len(vals)} scores for {len(fold_of)} questions")
    out = []
    for fold in (1, 2):
        train = [i for i, f in enumerate(fold_of) if f != fold]
        test = [i for i, f in enumerate(fold_of) if f == fold]
        allowed = None if eligible is None else eligible.get(fold, set()) | {baseline}
        means = {name: statistics.fmean(vals[i] for i in train) for name, vals in scores.items()
                 if allowed is None or name in allowed}
        chosen = max(means, key=lambda name: means[name])  # max keeps the first of equal values
        base = [scores[baseline][i] for i in test]
        got = [scores[chosen][i] for i in test]
        out.append(FoldResult(fold, chosen, metric, means[chosen], mean_se(base), mean_se(got),
                              mean_se([g - b for g, b in zip(got, base, strict=True)])))
    return out


def contexts(items: Sequence[MCItem], fmt: str, tokenizer: object) -> list[str]:
    if fmt == "primer":
        return [qa_context(it.question) for it in items]
    return [user_turn(it.question, tokenizer) for it in items]


async def per_question(api: Api, items: Sequence[MCItem], ctxs: Sequence[str], fmt: str, extra: dict[str, Any],
                       name: str) -> dict[str, list[float]]:
    """Per-question MC1 and MC2 under one configuration (summed option log-likelihoods)."""
    sep = " " if fmt == "primer" else ""
    ctx: list[str] = []
    cont: list[str] = []
    for it, c in zip(items, ctxs, strict=True):
        for o in it.options():
            ctx.append(c)
            cont.append(sep + o)
    scored = iter(await api.score(ctx, cont, extra, desc=f"TruthfulQA [{name}]"))
    res: dict[str, list[float]] = {m: [] for m in METRICS}
    for it in items:
        lp = {o: next(scored).total for o in it.options()}
        res["MC1"].append(scoring.mc1([lp[o] for o in it.mc1], list(it.mc1.values())))
        res["MC2"].append(scoring.mc2([lp[o] for o in it.mc2], list(it.mc2.values())))
    return res


async def neutral_perplexity(api: Api, configs: Mapping[str, dict[str, Any]], texts: Sequence[str]
                             ) -> dict[str, dict[int, float]]:
    """Each configuration's perplexity on neutral ``texts`` under the fields each fold's questions
    get (measured once when both folds get the same)."""
    out: dict[str, dict[int, float]] = {}
    for name, extra in configs.items():
        if not texts:
            continue
        out[name] = {}
        for fold in (1, 2):
            fields = fold_fields(extra, fold)
            if fold == 2 and fields == fold_fields(extra, 1):
                out[name][2] = out[name][1]
                continue
            got = await api.score([""] * len(texts), list(texts), fields, desc=f"perplexity [{name}, fold {fold}]")
            out[name][fold] = scoring.perplexity([s.logprobs for s in got])
    return out


def within_budget(ppl: Mapping[str, Mapping[int, float]], max_rise: float | None, baseline: str = "none"
                  ) -> dict[int, set[str]] | None:
    """Per fold, the configurations whose neutral perplexity under that fold's fields is at most
    ``(1 + max_rise)`` times the baseline's (None: no budget, or no perplexities)."""
    if max_rise is None or baseline not in ppl:
        return None
    return {fold: {n for n, p in ppl.items() if p[fold] <= (1 + max_rise) * ppl[baseline][fold]} for fold in (1, 2)}


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def markdown(title: str, names: Sequence[str], scores: Mapping[str, Mapping[str, Sequence[float]]],
             fold_of: Sequence[int], cv: Mapping[str, list[FoldResult]],
             ppl: Mapping[str, Mapping[int, float]] | None = None) -> str:
    ppl = ppl or {}
    lines = [f"# {title}\n", "## Every configuration, per fold (mean ± SE)\n",
             "Neutral perplexity: MMLU statements, under the fields each fold's questions get, relative to none.\n",
             "| config | MC1 fold 1 | MC1 fold 2 | MC2 fold 1 | MC2 fold 2 | neutral ppl fold 1 | neutral ppl fold 2 |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for metric in METRICS:
            for fold in (1, 2):
                e = mean_se([v for v, f in zip(scores[name][metric], fold_of, strict=True) if f == fold])
                cells.append(f"{e.value:.3f} ± {e.se:.3f}")
        for fold in (1, 2):
            p, base = ppl.get(name, {}).get(fold), ppl.get("none", {}).get(fold)
            cells.append(f"{p:.2f} ({p / base - 1:+.1%})" if p and base else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Cross-validated (chosen on the other fold)\n",
              "| metric | reported fold | chosen | its mean on the choosing fold | none | chosen | gain (paired ± SE) |",
              "|---|---|---|---|---|---|---|"]
    for metric, results in cv.items():
        for r in results:
            lines.append(f"| {metric} | {r.fold} (n={r.baseline.n}) | {r.chosen} | {r.train_value:.3f} | "
                         f"{r.baseline.value:.3f} ± {r.baseline.se:.3f} | {r.chosen_value.value:.3f} ± "
                         f"{r.chosen_value.se:.3f} | {r.gain.value:+.3f} ± {r.gain.se:.3f} |")
    return "\n".join(lines) + "\n"


def load_configs(spec: str) -> dict[str, dict[str, Any]]:
    """``{name: request fields}`` from JSON or ``@FILE``; ``none`` (no fields) is always first. A
    configuration ``{"by_fold": {"1": fields, "2": fields}}`` sends each fold's questions their own
    fields: an intervention *trained* on TruthfulQA must be trained on the other fold's questions
    (e.g. ``truthsteer probes heads --truthfulqa-fold 2`` for fold 1's), so that every score stays
    held out."""
    given = json.loads(Path(spec[1:]).read_text() if spec.startswith("@") else spec)
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise SystemExit("--configs: a JSON object {name: {request fields}}")
    for name, v in given.items():
        by = v.get("by_fold")
        if by is not None and (set(v) != {"by_fold"} or not isinstance(by, dict) or set(by) != {"1", "2"}
                               or not all(isinstance(f, dict) for f in by.values())):
            raise SystemExit(f"--configs: {name!r}: by_fold must be the only key, with fields for folds \"1\" and \"2\"")
    return {"none": {}} | {k: v for k, v in given.items() if k != "none"}


def fold_fields(extra: dict[str, Any], fold: int) -> dict[str, Any]:
    """The request fields a configuration sends with a question of ``fold``."""
    by = extra.get("by_fold")
    return dict(by[str(fold)]) if by is not None else extra


async def scored_by_fold(api: Api, items: Sequence[MCItem], ctxs: Sequence[str], fmt: str, extra: dict[str, Any],
                         name: str, fold_of: Sequence[int], qids: Sequence[int], cache: ScoreCache,
                         chunk: int = 100) -> dict[str, list[float]]:
    """:func:`per_question` with each fold's own fields, in the order of ``items``; scores come
    from ``cache`` (by the question's file index ``qids[i]``) and only missing questions are
    computed, ``chunk`` questions at a time, each chunk written before the next."""
    res: dict[str, list[float]] = {m: [0.0] * len(items) for m in METRICS}
    for fold in (1, 2):
        fields = fold_fields(extra, fold)
        idx = [i for i, f in enumerate(fold_of) if f == fold]
        have = cache.get(fields)
        todo = [i for i in idx if qids[i] not in have]
        for at in range(0, len(todo), chunk):
            part = todo[at:at + chunk]
            got = await per_question(api, [items[i] for i in part], [ctxs[i] for i in part], fmt, fields,
                                     f"{name}, fold {fold}, {at + len(part)}/{len(todo)}")
            have = cache.put(fields, {qids[i]: {m: got[m][j] for m in METRICS} for j, i in enumerate(part)})
        for i in idx:
            for m in METRICS:
                res[m][i] = have[qids[i]][m]
    return res


async def _run(api: Api, items: list[MCItem], ctxs: list[str], fmt: str, configs: dict[str, dict[str, Any]],
               cache: ScoreCache, picked: list[int], fold_of: list[int]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for name, extra in configs.items():
        t0 = time.time()
        out[name] = await scored_by_fold(api, items, ctxs, fmt, extra, name, fold_of, picked, cache)
        print(f"{name}: MC1 {statistics.fmean(out[name]['MC1']):.3f} MC2 {statistics.fmean(out[name]['MC2']):.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="URL of a running truthsteer server")
    ap.add_argument("--tokenizer", default=None, help="HF folder or packaged alias (chat template)")
    ap.add_argument("--configs", required=True, help="JSON {name: request fields} or @FILE; none is added")
    ap.add_argument("--format", choices=("chat", "primer"), default="chat")
    ap.add_argument("--per-fold", type=int, default=None,
                    help="a seeded sample of N questions from each fold (default: all 817)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--ppl-texts", type=int, default=100,
                    help="neutral texts (MMLU statements) whose perplexity each configuration reports; 0: none")
    ap.add_argument("--max-ppl-rise", type=float, default=None,
                    help="only configurations within this relative neutral-perplexity rise (e.g. 0.1) may be chosen "
                         "for a fold (measured under that fold's fields; needs --ppl-texts)")
    ap.add_argument("--generate", type=int, default=0,
                    help="also greedy answers to N questions per fold (seeded sample) under none and the MC1 "
                         "choice: truthful by ROUGE-1, answer perplexity (eval.truthfulqa_gen); 0: off, -1: all")
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from transformers import AutoTokenizer

    from bench.servers import machine
    from steering.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(args.tokenizer)))
    every = truthfulqa(None)
    picked = per_fold_sample(len(every), args.per_fold, args.seed)
    items = [every[i] for i in picked]
    fold_all = folds(len(every))
    fold_of = [fold_all[i] for i in picked]
    configs = load_configs(args.configs)
    model = httpx.get(f"{args.base}/v1/models", timeout=30).json()["data"][0]["id"]
    api = Api(args.base, model, concurrency=args.concurrency)
    t0 = time.time()

    ctxs = contexts(items, args.format, tokenizer)
    cache = ScoreCache(args.out / "scores", model, args.format)

    async def go() -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[int, float]], dict[int, set[str]] | None,
                            dict[str, list[FoldResult]], list[GenResult]]:
        try:
            scores = await _run(api, items, ctxs, args.format, configs, cache, picked, fold_of)
            ppl = await neutral_perplexity(api, configs, neutral_texts(args.ppl_texts) if args.ppl_texts else [])
            eligible = within_budget(ppl, args.max_ppl_rise)
            cv = {m: cross_validate({k: v[m] for k, v in scores.items()}, fold_of, metric=m, eligible=eligible)
                  for m in METRICS}
            chosen = {r.fold: (r.chosen, fold_fields(configs[r.chosen], r.fold)) for r in cv["MC1"] if r.chosen != "none"}
            gen = (await generated(api, items, ctxs, picked, fold_of, chosen, cache,
                                   None if args.generate < 0 else args.generate, args.seed, args.gen_tokens)
                   if args.generate else [])
            return scores, ppl, eligible, cv, gen
        finally:
            await api.close()

    scores, ppl, eligible, cv, gen = asyncio.run(go())
    budget = "" if eligible is None else f", choices within +{args.max_ppl_rise:.0%} neutral perplexity"
    title = f"TruthfulQA v0 MC, two-fold CV by question, {model} ({len(items)} questions, {args.format} format{budget})"
    report = markdown(title, list(configs), scores, fold_of, cv, ppl)
    if gen:
        report += "\n" + gen_markdown(gen, args.gen_tokens)
    (args.out / "truthfulqa_cv.md").write_text(report)
    (args.out / "truthfulqa_cv.json").write_text(json.dumps(
        {"model": model, "format": args.format, "n_questions": len(items), "per_fold": args.per_fold,
         "seed": args.seed, "questions": picked, "configs": configs, "neutral_perplexity": ppl,
         "ppl_texts": args.ppl_texts, "max_ppl_rise": args.max_ppl_rise,
         "cv": {m: [asdict(r) for r in rs] for m, rs in cv.items()}, "generated": [asdict(g) for g in gen],
         "generate_per_fold": args.generate, "gen_tokens": args.gen_tokens, "machine": machine(),
         "wall_s": time.time() - t0, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
