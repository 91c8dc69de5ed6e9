"""At which depth a stated belief moves the A/B answer: the biased-belief set read through the
logit lens (HF transformers, offline; no server).

For every A/B prompt of a split (neutral, biased, and the control where the user states the
correct answer; :mod:`probes.biased_belief`) the residual stream at the position where the answer
letter is predicted is read at every depth through the model's own final norm and LM head
(``nostalgebraist``'s logit lens): depth ``0`` is the embeddings, depth ``k`` the output of decoder
layer ``k - 1``, the last depth the model's own next-token distribution. A prompt is correct at a
depth when the correct letter's token is more likely there than the wrong one's.

What it answers: whether an early exit, or a contrast with a lower layer (``decoding``), could
undo the stated belief. If the drop appears at the same depth as the answer itself, no read-out of
a lower layer holds the answer without the belief's pull.

    python -m eval.lens --model qwen2.5-coder-1.5b-instruct --split train --out eval/results/lens-qwen/train
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eval.switch import KINDS, kind_of
from probes import biased_belief as bb
from probes.sources import chat_ab


def first_difference(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], int, int]:
    """The common prefix of two token sequences and their first differing tokens: where a model
    choosing between two continuations decides. ``ValueError`` when one is a prefix of the other."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == len(a) or n == len(b):
        raise ValueError("one continuation is a prefix of the other: no token decides between them")
    return list(a[:n]), int(a[n]), int(b[n])


@torch.inference_mode()
def lens_logprobs(model: Any, prefix: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
    """``[depths, len(tokens)]`` float32 log-probabilities of ``tokens`` after ``prefix`` at every
    depth (embeddings, each decoder layer's output; the last row is the model's own output).

    HF returns the last hidden state already normed; the others go through the model's final norm.
    """
    ids = torch.tensor([list(prefix)], dtype=torch.long)
    out = model(ids, output_hidden_states=True)
    states = torch.stack([h[0, -1] for h in out.hidden_states])
    norm = model.get_decoder().norm
    normed = torch.cat([norm(states[:-1]), states[-1:]])
    logp = torch.log_softmax(model.get_output_embeddings()(normed).float(), dim=-1)
    return logp[:, list(tokens)]


def margins(model: Any, tok: Any, prompts: Sequence[bb.Prompt]) -> torch.Tensor:
    """``[len(prompts), depths]``: log p(correct letter) - log p(wrong letter) at each depth."""
    rows = []
    for p in prompts:
        if p.correct_letter is None:
            raise ValueError(f"{p.id}: not an A/B prompt")
        wrong = "B" if p.correct_letter == "A" else "A"
        enc = [tok(chat_ab(p.text, x, tok), add_special_tokens=False)["input_ids"] for x in (p.correct_letter, wrong)]
        prefix, good, bad = first_difference(*enc)
        lp = lens_logprobs(model, prefix, [good, bad])
        rows.append(lp[:, 0] - lp[:, 1])
    return torch.stack(rows)


def depth_table(margin: torch.Tensor, kinds: Sequence[str]) -> list[dict[str, float]]:
    """Per depth: accuracy of each kind (a tie is not correct), and the drop the stated belief
    causes with its paired standard error (:func:`probes.biased_belief.accuracy_drop`). Neutral and
    biased prompts are paired by order: the i-th neutral prompt and the i-th biased one are the
    same question."""
    index = {k: [i for i, x in enumerate(kinds) if x == k] for k in KINDS}
    out = []
    for d in range(margin.shape[1]):
        ok = {k: [bool(margin[i, d] > 0) for i in v] for k, v in index.items()}
        drop = bb.accuracy_drop(ok["neutral"], ok["biased"])
        row = {"depth": float(d), "drop": drop.value, "drop_se": drop.se}
        row |= {f"acc_{k}": statistics.fmean(v) for k, v in ok.items() if v}
        out.append(row)
    return out


def markdown(rows: Sequence[dict[str, float]], title: str) -> str:
    lines = [f"# {title}\n", "| depth | neutral acc | biased acc | drop (± SE) | user states the correct answer |",
             "|---|---|---|---|---|"]
    for r in rows:
        agree = f"{r['acc_agree']:.3f}" if "acc_agree" in r else "-"
        lines.append(f"| {int(r['depth'])} | {r['acc_neutral']:.3f} | {r['acc_biased']:.3f} | "
                     f"{r['drop']:.3f} ± {r['drop_se']:.3f} | {agree} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF folder or packaged alias")
    ap.add_argument("--split", choices=bb.SPLITS, required=True)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--limit", type=int, default=None, help="first N questions of the split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from probes.extract import load_hf
    from steering.models import resolve_model

    model, tok = load_hf(resolve_model(args.model), getattr(torch, args.dtype))
    questions = bb.split_questions(bb.load_questions())[args.split][: args.limit]
    prompts = [p for p in bb.build_prompts(questions, args.seed) + bb.agree_prompts(questions, args.seed)
               if p.form == "ab"]
    rows = depth_table(margins(model, tok, prompts), [kind_of(p) for p in prompts])
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"Logit lens of the A/B letter, {args.model} ({args.dtype}), split {args.split} ({len(questions)} questions)"
    (args.out / "lens.md").write_text(markdown(rows, title))
    (args.out / "lens.json").write_text(json.dumps({"model": args.model, "split": args.split, "dtype": args.dtype,
                                                    "n_questions": len(questions), "rows": rows}, indent=1))
    print(markdown(rows, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
