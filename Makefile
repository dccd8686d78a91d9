# coalora: the two commands are `make run` and `make test`; both set up what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.coalora-installed
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

# Offline model + corpus into $$COALORA_HOME (default ~/.cache/coalora); fast when already there.
assets: $(STAMP)
	$(PY) -m coalora prepare

run: setup
	$(PY) app.py

test: setup
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration and not slow"

bench: setup
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
