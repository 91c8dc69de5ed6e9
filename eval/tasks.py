"""Evaluation tasks: each takes the API, its items and a request configuration, returns numbers."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.asyncio import tqdm_asyncio

from eval import scoring
from eval.client import Api
from eval.configs import Config
from eval.data import ABItem, MCItem, qa_context
from probes import datasets as ds
from probes import sources as src


async def truthfulqa_mc(api: Api, items: Sequence[MCItem], cfg: Config) -> dict[str, float]:
    """MC0/MC1/MC2 by the summed log-likelihood of each option after the QA primer."""
    ctx: list[str] = []
    cont: list[str] = []
    for it in items:
        for o in it.options():
            ctx.append(qa_context(it.question))
            cont.append(" " + o)
    scored = await api.score(ctx, cont, cfg.extra, desc=f"TruthfulQA [{cfg.name}]")
    by_text = iter(scored)
    res: dict[str, list[float]] = {"MC0": [], "MC1": [], "MC2": []}
    for it in items:
        lp = {o: next(by_text).total for o in it.options()}
        res["MC1"].append(scoring.mc1([lp[o] for o in it.mc1], list(it.mc1.values())))
        res["MC2"].append(scoring.mc2([lp[o] for o in it.mc2], list(it.mc2.values())))
        if it.mc0:
            res["MC0"].append(scoring.mc1([lp[o] for o in it.mc0], list(it.mc0.values())))
    return {k: statistics.fmean(v) for k, v in res.items() if v} | {"n": len(items)}


async def ab_behaviour(api: Api, items: Sequence[ABItem], cfg: Config, tokenizer: object, desc: str) -> dict[str, float]:
    """P(matching letter) renormalised over the two letters, CAA's chat convention ``(X``."""
    ctx: list[str] = []
    cont: list[str] = []
    for it in items:
        for letter in (it.matching, it.other):
            text = src.chat_ab(it.question, letter, tokenizer)
            ctx.append(text[:-1])
            cont.append(text[-1])
    scored = await api.score(ctx, cont, cfg.extra, desc=f"{desc} [{cfg.name}]")
    probs = [scoring.pair_probability(scored[2 * i].total, scored[2 * i + 1].total) for i in range(len(items))]
    return {"p_matching": statistics.fmean(probs), "frac_matching": statistics.fmean(p > 0.5 for p in probs),
            "n": len(items)}


async def ab_generated(api: Api, items: Sequence[ABItem], cfg: Config, tokenizer: object, desc: str
                       ) -> dict[str, float]:
    """The letter the model writes (greedy, one token after the CAA prefix ``(``), under ``cfg``:
    the fraction of items answered with the behaviour's letter, among answers that are A or B."""

    async def one(it: ABItem) -> tuple[str, dict[str, int]]:
        prompt = src.chat_ab(it.question, "", tokenizer)
        c = await api.generate(prompt, 1, dict(cfg.extra))
        return str(c["text"]).strip()[:1], dict(c.get("interventions") or {})

    got: list[tuple[str, dict[str, int]]] = await tqdm_asyncio.gather(
        *[one(it) for it in items], desc=f"{desc} [{cfg.name}]", leave=False)
    letters = [x for x, _ in got]
    answered = [(it, x) for it, x in zip(items, letters, strict=True) if x in (it.matching, it.other)]
    frac = statistics.fmean(x == it.matching for it, x in answered) if answered else float("nan")
    out = {"frac_matching": frac, "answered": len(answered) / len(items), "n": len(items)}
    # the letter is the only generated token: the fraction of items whose letter was steered / contrasted
    for key in ("steered_tokens", "contrasted_tokens"):
        if any(key in iv for _, iv in got):
            out[key.split("_")[0]] = statistics.fmean(iv.get(key, 0) > 0 for _, iv in got)
    return out


async def perplexity(api: Api, texts: Sequence[str], cfg: Config) -> float:
    scored = await api.score([""] * len(texts), list(texts), cfg.ppl_fields, desc=f"perplexity [{cfg.name}]")
    return scoring.perplexity([s.logprobs for s in scored])


async def probe_auroc(api: Api, data: ds.Dataset, probe: str) -> dict[str, float]:
    scores = await api.probe_scores([e.text for e in data.examples], [probe])
    vals = [s[probe] for s in scores]
    pairs = [(e.label, v) for e, v in zip(data.examples, vals, strict=True) if v is not None]
    return {"auroc": scoring.auroc([p[0] for p in pairs], [p[1] for p in pairs]), "n": len(pairs)}


@dataclass(frozen=True)
class Answer:
    text: str
    truthful: bool
    probe_mean: float | None
    steered_tokens: int | None
    contrasted_tokens: int | None = None


async def answers(api: Api, items: Sequence[MCItem], cfg: Config, max_tokens: int) -> list[Answer]:
    """Greedy free-form answers after the QA primer (stop at the end of the line), with the truth
    probe's per-answer summary; truthful by TruthfulQA's ROUGE-1 similarity to the references."""

    async def one(it: MCItem) -> Answer:
        extra: dict[str, Any] = {**cfg.extra, "probes": ["truth"], "stop": ["\n"]}
        c = await api.generate(qa_context(it.question), max_tokens, extra)
        text = str(c["text"]).strip()
        summary = c.get("probe_scores", {}).get("truth", {})
        iv = c.get("interventions") or {}
        return Answer(text, scoring.rouge_truthful(text, it.correct_refs, it.incorrect_refs), summary.get("mean"),
                      iv.get("steered_tokens"), iv.get("contrasted_tokens"))

    got: list[Answer] = await tqdm_asyncio.gather(*[one(it) for it in items], desc=f"answers [{cfg.name}]", leave=False)
    return got


async def fluency(api: Api, items: Sequence[MCItem], got: Sequence[Answer]) -> float:
    """Perplexity of generated answers under the unsteered model (a fluency side effect)."""
    pairs = [(qa_context(it.question), " " + a.text) for it, a in zip(items, got, strict=True) if a.text]
    scored = await api.score([p[0] for p in pairs], [p[1] for p in pairs], {}, desc="fluency")
    return scoring.perplexity([s.logprobs for s in scored])
