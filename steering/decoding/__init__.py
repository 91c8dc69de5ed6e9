"""Contrastive lower-layer decoding (DoLa-style, the request's ``decoding`` field), in one place.

- :mod:`~steering.decoding.spec`: the wire schema (``DecodingSpec``) and its resolution against a
  model (premature layers, buckets, gate); no vLLM import.
- :mod:`~steering.decoding.contrastive`: the pure maths (JSD layer choice, adaptive plausibility
  mask, contrast of final and premature log-probabilities) on plain tensors.
- :mod:`~steering.decoding.stash`: worker side, the premature-layer hidden states of the rows that
  sample this step (read from the step plan), kept in fixed buffers inside the compiled graph.
- :mod:`~steering.decoding.logits_processor`: the vLLM logits processor that contrasts those rows.
- :mod:`~steering.decoding.prompt_contrast`: the same contrast for echo scoring (prompt logprobs).

The last three import vLLM; the first two are importable (and tested) without an engine.
"""
