"""Contrastive decoding benchmark: `make bench` / `python -m bench.dola`.

The steering benchmark's workload (64 concurrent requests x 64 new tokens, greedy, ignore_eos) on
one truthsteer engine, in alternating rounds (``--repeats``), median tokens/s of:
  (a) greedy, no ``decoding``
  (b) DoLa, ``premature_layers: "high"`` (8 candidate layers on the default model): every step
      runs the LM head over the whole vocabulary for every candidate layer of every row
  (c) fixed contrast with one layer (``contrast``, ``[16]``): the sparse path, premature logits
      only at the plausible tokens
  (e) DoLa ``"high"`` gated by the truth probe at the decoded position (``GATED``): the probe is
      read in the same pass; closed steps skip the premature LM heads
and, for comparison, (d) the same DoLa workload through HF transformers: one batched greedy loop
(left padding, KV cache, ``output_hidden_states``) with the same maths
(:func:`steering.decoding.contrastive.apply_contrast`). Ratios b/a, c/a, b/d; writes
bench/results/dola-latest.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.steering import workload, write_result

RESULTS = Path(__file__).resolve().parent / "results"
DOLA = {"method": "dola", "premature_layers": "high"}
CONTRAST = {"method": "contrast", "premature_layers": [16]}
GATED = {**DOLA, "gate": {"probe": "truth", "below": 0.5}}


def timed(llm: Any, prompts: list[str], params: Any, decoding: Any) -> float:
    t = time.perf_counter()
    outs = llm.generate(prompts, params, decoding=decoding)
    dt = time.perf_counter() - t
    return sum(len(o.outputs[0].token_ids) for o in outs) / dt


def hf_dola(model_path: str, prompts: list[str], tokens: int, raw: dict[str, Any]) -> float:
    """Tokens/s of batched greedy DoLa with HF transformers (same maths as the engine)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steering.decoding.contrastive import apply_contrast
    from steering.decoding.spec import parse_decoding, resolve_decoding

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    cfg = resolve_decoding(parse_decoding(raw), model.config.num_hidden_layers,
                           tie_word_embeddings=bool(model.config.tie_word_embeddings))
    head, norm = model.get_output_embeddings(), model.model.norm
    enc = tok(prompts, return_tensors="pt", padding=True)
    t = time.perf_counter()
    with torch.inference_mode():
        ids, mask = enc["input_ids"], enc["attention_mask"]
        history = [list(x) for x in ids.tolist()]
        past, feed = None, ids
        for _ in range(tokens):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -feed.shape[1]:]
            out = model(input_ids=feed, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True,
                        output_hidden_states=True)
            past = out.past_key_values
            premature = {k: head(norm(out.hidden_states[k][:, -1])).float() for k in cfg.layers}
            scores = apply_contrast(out.logits[:, -1].float(), premature, [cfg] * len(prompts), history)
            nxt = scores.argmax(-1)
            for h, x in zip(history, nxt.tolist(), strict=True):
                h.append(x)
            feed = nxt[:, None]
            mask = torch.cat([mask, torch.ones_like(feed)], dim=1)
    return len(prompts) * tokens / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    from vllm import SamplingParams

    from steering.llm import SteeredLLM

    prompts = workload(args.requests)
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    eng = SteeredLLM(model=args.model)
    timed(eng, prompts[:8], params, None)  # warm-up
    timed(eng, prompts[:8], params, DOLA)
    runs: dict[str, list[float]] = {"a": [], "b": [], "c": [], "e": []}
    for _ in range(args.repeats):
        runs["a"].append(timed(eng, prompts, params, None))
        runs["b"].append(timed(eng, prompts, params, DOLA))
        runs["c"].append(timed(eng, prompts, params, CONTRAST))
        runs["e"].append(timed(eng, prompts, params, GATED))
    (stats,) = eng.llm.collective_rpc("truthsteer_decoding_stats")
    model_path = eng.prepared.model_path
    eng.llm.llm_engine.engine_core.shutdown()
    a, b, c, e = (statistics.median(runs[k]) for k in "abce")
    d = None if args.skip_hf else hf_dola(model_path, prompts, args.tokens, DOLA)

    result: dict[str, Any] = {
        "benchmark": "contrastive-decoding",
        "workload": {"requests": args.requests, "new_tokens": args.tokens, "greedy": True, "repeats": args.repeats},
        "tokens_per_s": {"a_greedy": round(a, 2), "b_dola_high": round(b, 2), "c_contrast_one_layer": round(c, 2),
                         "d_hf_dola_high": None if d is None else round(d, 2), "e_dola_probe_gated": round(e, 2)},
        "ratios": {"b/a": round(b / a, 3), "c/a": round(c / a, 3), "b/d": None if d is None else round(b / d, 3),
                   "e/a": round(e / a, 3)},
        "gate": GATED["gate"],
        "decoding_stats": stats,
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }
    out = write_result("dola-latest", result)
    print(f"{'config':<36}{'tok/s':>10}{'ratio':>8}")
    print(f"{'(a) greedy':<36}{a:>10.1f}{1.0:>8.3f}")
    print(f"{'(b) DoLa high (8 layers)':<36}{b:>10.1f}{b / a:>8.3f}")
    print(f"{'(c) contrast, one layer':<36}{c:>10.1f}{c / a:>8.3f}")
    if d is not None:
        print(f"{'(d) DoLa high, HF transformers':<36}{d:>10.1f}{d / a:>8.3f}")
    print(f"{'(e) DoLa high, truth-probe gated':<36}{e:>10.1f}{e / a:>8.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
