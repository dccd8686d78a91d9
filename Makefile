# coalora: the two commands are `make run` and `make test`; both set up what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.coalora-installed
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup assets run test test-fast bench lint train-default clean-venv

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

lint: $(STAMP)
	$(VENV)/bin/ruff check coalora ui tests bench scripts app.py

clean-venv:
	rm -rf $(VENV)
