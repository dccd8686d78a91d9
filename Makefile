# coalora: the two commands are `make run` and `make test`; both set up what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.coalora-installed
LLAMA_STAMP := $(VENV)/.coalora-llama-installed
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup assets run test test-fast bench lint train-default seed clean-venv

setup: $(STAMP) assets

# Re-install only when the pinned requirements or the package metadata change.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# llama-cpp-python (requirements-llama.txt) for the tests and benchmarks only, so `make run` never waits
# for it. It has no binary wheel on PyPI: a wheel in $(COALORA_HOME)/wheels is reused (pip wheel finds it
# there and builds nothing), else one is built there once (~20 min on 2 cores), for every clone.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
$(LLAMA_STAMP): $(STAMP) requirements-llama.txt
	mkdir -p $(COALORA_HOME)/wheels
	@echo "llama-cpp-python: the wheel in $(COALORA_HOME)/wheels, or building one there (once, ~20 min on 2 cores)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip wheel -q \
	  --disable-pip-version-check --no-deps --find-links $(COALORA_HOME)/wheels -w $(COALORA_HOME)/wheels \
	  -r requirements-llama.txt
	$(PY) -m pip install -q --disable-pip-version-check --only-binary llama-cpp-python \
	  --find-links $(COALORA_HOME)/wheels -r requirements-llama.txt
	touch $(LLAMA_STAMP)

# Offline model + corpus into $$COALORA_HOME (default ~/.cache/coalora); fast when already there.
assets: $(STAMP)
	$(PY) -m coalora prepare

run: setup
	$(PY) app.py

test: setup $(LLAMA_STAMP)
	$(PY) -m pytest

test-fast: $(STAMP) $(LLAMA_STAMP)
	$(PY) -m pytest -m "not integration and not slow"

bench: setup $(LLAMA_STAMP)
	$(PY) -m bench

# The shipped default adapter (data/default/): CoA-LoRA on SmolLM2-135M, CPU recipe (TrainConfig
# defaults, ~80 min on 2 cores). Resumable: rerun after an interruption. Then the adapter file.
COALORA_HOME ?= $(HOME)/.cache/coalora
train-default: setup
	$(PY) -m coalora train --out $(COALORA_HOME)/runs/default
	$(PY) -m coalora export-trained --run $(COALORA_HOME)/runs/default --out data/default/smollm2-135m-coalora.safetensors

# The results store's seed (data/seed/*.parquet): measured fronts of the default adapter and the bare
# quantized model (~10 min on 2 cores). See data/README.md.
seed: setup
	$(PY) scripts/seed_results.py --out data/seed

lint: $(STAMP)
	$(VENV)/bin/ruff check coalora ui tests bench scripts app.py

clean-venv:
	rm -rf $(VENV)
