# The two promises: `make demo` and `make test`. Every target sets itself up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install tools test lint demo bench soak browser-check synth image-check clean

install: $(STAMP)

# Re-installs only when the pinned dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,cdk,bench]'
	touch $@

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/actionlint

demo: install
	$(PY) -m kit demo

# Serving (the kit's server against LitServe, pyproject's `bench` extra, installed with the rest) and whole-slide
# benchmarks on this machine, then the GPU benchmark (its CPU mode where there is no GPU), then packaging and
# loading a real-size ViT-g (needs about 7 GB of disk under build/bench/).
bench: install
	$(PY) -m bench.serving
	$(PY) -m bench.decode_pool
	$(PY) -m bench.tile_decode
	$(PY) -m bench.slides
	$(PY) -m bench.cohort
	$(PY) -m bench.gpu_bench || $(PY) -m bench.gpu_bench --tiny
	$(PY) -m bench.load_bench

# Soak and fault test: SOAK_MINUTES of mixed load with bad inputs and a poison tile; fails on memory growth,
# stray 5xx or mismatched answers (report in build/soak/soak.json).
SOAK_MINUTES ?= 2
soak: install
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES)

# /docs and /redoc in headless Chromium (Debian's, installed here if absent) with no route out: every operation
# rendered, with and without a token; screenshots in build/browser-check/. Not in `make test`: it needs root's apt.
browser-check: install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
	$(PY) -m tests.browser_check

# Node tools: the pinned AWS CDK CLI, for `node_modules/.bin/cdk deploy` (synthesis needs only Python).
tools: node_modules/.bin/cdk

node_modules/.bin/cdk: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The CDK app, offline (placeholder account and region unless CDK_DEFAULT_ACCOUNT/REGION are set): cdk-nag's
# AwsSolutions and HIPAA packs fail it on any unacknowledged finding; then cfn-lint and checkov (in .venv-checkov;
# its skips carry their reason in the template). Synthesized twice: as cdk.json says (docs/architecture.md is drawn
# from it), and with an example cohortJobs into cdk.out/cohort-jobs/, so that the cohort-job role is checked too.
COHORT_JOBS := -c 'cohortJobs={"inputs": ["s3://example-slides/cohorts/"]}'
CHECKOV := .venv-checkov/bin/checkov --quiet --compact --skip-download --framework cloudformation
synth: install build/demo/H1/model.tar.gz build/demo/M/model.tar.gz .venv-checkov/.installed-stamp
	rm -rf cdk.out
	$(PY) app.py
	CDK_OUTDIR=cdk.out/cohort-jobs $(PY) app.py $(COHORT_JOBS)
	$(VENV)/bin/cfn-lint cdk.out/*.template.json cdk.out/cohort-jobs/*.template.json
	$(CHECKOV) $$(printf -- '-f %s ' cdk.out/*.template.json cdk.out/cohort-jobs/*.template.json)
	$(PY) -m stacks.diagram cdk.out --write docs/architecture.md
	@echo "synthesized into cdk.out/: cdk-nag, cfn-lint and checkov clean; docs/architecture.md redrawn"

build/demo/H1/model.tar.gz: $(STAMP)
	$(PY) -m kit package --demo --models h1,tissue-seg --out build/demo/H1

build/demo/M/model.tar.gz: $(STAMP)
	$(PY) -m kit package --demo --models m-optimus,tissue-seg --out build/demo/M

# The serving image built with podman (a Debian stand-in for its base, PyPI's torch) and run as SageMaker runs it:
# read-only root, no network, the demo artifacts at /opt/ml/model; vendor payloads, kit smoke, SIGTERM. Needs root.
image-check: install
	container/image_check.sh

clean:
	rm -rf $(VENV) $(SDK_VENVS) .venv-vendor-sdk build cdk.out .pytest_cache .mypy_cache .ruff_cache

# The SageMaker Python SDK against the local server (tests/sdk_check.py): 2.x's Predictor (.venv-sdk, pyproject's `sdk`
# extra) and 3.x's Endpoint (.venv-sdk-core, the `sdk-core` extra), each in a venv of its own: the kit's pins untouched.
# Then the vendor's own SDK (tests/vendor_sdk_check.py, .venv-vendor-sdk on Python 3.12): its endpoint check, its
# whole-slide pipeline beside the kit's slide path, its readers on the kit's files.
.PHONY: sdk-check
SDK_VENVS := .venv-sdk .venv-sdk-core
PYTHON312 ?= $(firstword $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null) \
	$(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12))

sdk-check: install build/sdk-check/art/model.tar.gz $(SDK_VENVS:%=%/.installed-stamp) .venv-vendor-sdk/.installed-stamp
	set -e; for venv in $(SDK_VENVS); do \
		$$venv/bin/python -m tests.sdk_check --python $(PY) --model-dir build/sdk-check/art/model; done
	.venv-vendor-sdk/bin/python -m tests.vendor_sdk_check --python $(PY) --model-dir build/sdk-check/art/model

# The vendor SDK needs Python >= 3.12 (PYTHON312: a python3.12 that runs, or pyenv's).
.venv-vendor-sdk/.installed-stamp: pyproject.toml
	@test -n "$(PYTHON312)" || { echo "make sdk-check needs Python 3.12 for the vendor SDK: set PYTHON312=/path/to/python3.12"; exit 1; }
	test -x .venv-vendor-sdk/bin/python || $(PYTHON312) -m venv .venv-vendor-sdk
	.venv-vendor-sdk/bin/python -m pip install --quiet --disable-pip-version-check $$(.venv-vendor-sdk/bin/python -c \
		"import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['vendor-sdk'])")
	touch $@

# .venv-EXTRA gets pyproject's optional dependencies EXTRA, alone.
.venv-%/.installed-stamp: pyproject.toml
	test -x .venv-$*/bin/python || python3 -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --disable-pip-version-check $$(.venv-$*/bin/python -c \
		"import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['$*'])")
	touch $@

build/sdk-check/art/model.tar.gz: $(STAMP)
	$(PY) -m kit package --demo --models h1,m-optimus,tissue-seg --out build/sdk-check/art
