"""Helpers shared by the test suites, in one place: fakes, toy models and engines, references and
processes. Nothing here is collected as a test (no ``test_*`` module), and test modules import
helpers only from here, never from one another.

- ``tiny``: tiny random bundles and Llama models (``INFO``, ``make_bundle``, ``make_tiny_llama``)
- ``fakes``, ``fault_fakes``: engines and tokenizers behind ``Serving`` for the HTTP layer
- ``toy``, ``toy_engine``: the vLLM-shaped toy model and an engine that runs the real worker runtime
- ``logits_processor``: batch set-ups for the contrastive logits processor and the stash
- ``hf_dola_455``, ``dola_reference``: HF's DoLa selection (vendored) and a readable greedy reference
- ``reference``, ``engine_outputs``, ``parity``: HF references and comparisons for the real engine
- ``procs``, ``serve``: processes and a real server on a free port
- ``manifests``, ``prom``, ``browser``: deployment files, a real Prometheus, headless Chromium
"""
