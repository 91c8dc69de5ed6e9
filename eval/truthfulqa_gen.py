"""Generated-answer truthfulness and fluency of a TruthfulQA cross-validation's choices (issue 22).

MC1/MC2 say which answer the model *prefers*; this says what it *writes*. For each reported fold,
greedy answers (the question as the user's turn, at most ``max_tokens``, stopping at the end of
the first line) to a seeded sample of the fold's questions, under ``none`` and under the
configuration :func:`eval.truthfulqa_cv.cross_validate` chose on the other fold. An answer is
truthful by TruthfulQA's similarity metric (ROUGE-1 closer to a true than to any false reference,
:func:`eval.scoring.rouge_truthful`); fluency is the perplexity of the answers under the
*unsteered* model in the same context. The gain in truthful answers is a paired difference over
the same questions, with its standard error.

Answers are cached with the MC scores (:class:`eval.score_cache.ScoreCache`), under the request
fields plus a ``generate`` entry, so they never mix with option scores and a rerun only generates
what is missing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.asyncio import tqdm_asyncio

from eval import scoring
from eval.client import Api
from eval.data import MCItem
from eval.score_cache import ScoreCache
from eval.scoring import mean_se
from probes.biased_belief import Estimate

STOP = ["\n"]


@dataclass(frozen=True)
class GenResult:
    """One reported fold: none vs the configuration chosen on the other fold, in generated answers."""

    fold: int
    chosen: str
    truthful_none: Estimate
    truthful_chosen: Estimate
    gain: Estimate  # paired over the same questions
    ppl_none: float  # answers' perplexity under the unsteered model
    ppl_chosen: float


def gen_fields(fields: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    """The cache key of generated answers under ``fields`` (never equal to an MC scoring key)."""
    return {**fields, "generate": {"max_tokens": max_tokens, "stop": STOP}}


def sample(idx: Sequence[int], n: int | None, seed: int) -> list[int]:
    """A seeded sample of ``n`` of ``idx`` (all when ``n`` is None or larger), in their order."""
    if n is None or n >= len(idx):
        return list(idx)
    keep = set(random.Random(seed).sample(list(idx), n))
    return [i for i in idx if i in keep]


async def answered(api: Api, items: Sequence[MCItem], ctxs: Sequence[str], qids: Sequence[int],
                   fields: Mapping[str, Any], cache: ScoreCache, max_tokens: int, desc: str
                   ) -> dict[int, dict[str, float]]:
    """Per question (by file index): truthful (0/1), and the answer's summed negative log-likelihood
    and token count under the unsteered model (for the pooled perplexity)."""
    key = gen_fields(fields, max_tokens)
    have = cache.get(key)
    todo = [j for j, q in enumerate(qids) if q not in have]
    if not todo:
        return have

    async def one(j: int) -> str:
        c = await api.generate(ctxs[j], max_tokens, {**fields, "stop": STOP})
        return str(c["text"]).strip()

    texts: list[str] = await tqdm_asyncio.gather(*[one(j) for j in todo], desc=desc, leave=False)
    spoken = [(j, t) for j, t in zip(todo, texts, strict=True) if t]
    scored = await api.score([ctxs[j] for j, _ in spoken], [t for _, t in spoken], {}, desc=f"fluency {desc}")
    nll = {j: (-sum(s.logprobs), float(len(s.logprobs))) for (j, _), s in zip(spoken, scored, strict=True)}
    new = {}
    for j, t in zip(todo, texts, strict=True):
        it = items[j]
        lp, n = nll.get(j, (0.0, 0.0))
        new[qids[j]] = {"truthful": float(scoring.rouge_truthful(t, it.correct_refs, it.incorrect_refs)) if t else 0.0,
                        "nll": lp, "tokens": n}
    return cache.put(key, new)


def pooled_perplexity(rows: Sequence[Mapping[str, float]]) -> float:
    tokens = sum(r["tokens"] for r in rows)
    return math.exp(sum(r["nll"] for r in rows) / tokens) if tokens else math.nan


def compare(none: Sequence[Mapping[str, float]], chosen: Sequence[Mapping[str, float]], fold: int, name: str
            ) -> GenResult:
    """Paired comparison of one fold's answers (same questions, same order)."""
    a = [r["truthful"] for r in none]
    b = [r["truthful"] for r in chosen]
    return GenResult(fold, name, mean_se(a), mean_se(b), mean_se([y - x for x, y in zip(a, b, strict=True)]),
                     pooled_perplexity(none), pooled_perplexity(chosen))


async def generated(api: Api, items: Sequence[MCItem], ctxs: Sequence[str], qids: Sequence[int],
                    fold_of: Sequence[int], chosen: Mapping[int, tuple[str, Mapping[str, Any]]], cache: ScoreCache,
                    per_fold: int | None, seed: int = 0, max_tokens: int = 48) -> list[GenResult]:
    """For each fold in ``chosen`` (fold -> (name, the fields its questions get)): none vs chosen."""
    out = []
    for fold, (name, fields) in sorted(chosen.items()):
        idx = sample([i for i, f in enumerate(fold_of) if f == fold], per_fold, seed)
        its, cs, qs = [items[i] for i in idx], [ctxs[i] for i in idx], [qids[i] for i in idx]
        base = await answered(api, its, cs, qs, {}, cache, max_tokens, f"answers [none, fold {fold}]")
        got = await answered(api, its, cs, qs, fields, cache, max_tokens, f"answers [{name}, fold {fold}]")
        out.append(compare([base[q] for q in qs], [got[q] for q in qs], fold, name))
    return out


def markdown(results: Sequence[GenResult], max_tokens: int) -> str:
    lines = ["## Generated answers (greedy, chat format, first line, at most "
             f"{max_tokens} tokens; truthful = TruthfulQA's ROUGE-1 metric)\n",
             "| reported fold | chosen | n | truthful none | truthful chosen | gain (paired ± SE) | "
             "answer ppl none | answer ppl chosen |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.fold} | {r.chosen} | {r.gain.n} | {r.truthful_none.value:.3f} ± {r.truthful_none.se:.3f} | "
                     f"{r.truthful_chosen.value:.3f} ± {r.truthful_chosen.se:.3f} | {r.gain.value:+.3f} ± "
                     f"{r.gain.se:.3f} | {r.ppl_none:.2f} | {r.ppl_chosen:.2f} |")
    return "\n".join(lines) + "\n"
