# The two promises: `make demo` and `make test`. Every target sets itself up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test lint demo bench clean

install: $(STAMP)

# Re-installs only when the pinned dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,cdk]'
	touch $@

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: install
	$(PY) -m kit demo

# Serving benchmark on this machine, then the GPU benchmark (its CPU mode where there is no GPU).
bench: install
	$(PY) -m bench.serving
	$(PY) -m bench.gpu_bench || $(PY) -m bench.gpu_bench --tiny

clean:
	rm -rf $(VENV) build cdk.out .pytest_cache .mypy_cache .ruff_cache
