# softcamify — two commands set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch/torchvision pinned to the releases this workplace keeps on disk; any torch>=2.4 works.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test demo lint typecheck install install-dev clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check softcamify tests benchmarks scripts
	$(VENV)/bin/ruff format --check softcamify tests benchmarks scripts

# mypy on softcamify/ against a committed baseline that may only shrink (scripts/mypy-baseline.txt)
typecheck: $(VENV)/.installed-dev
	$(PY) scripts/typecheck.py

test: lint typecheck
	$(VENV)/bin/pytest -n 2 --dist loadfile  # two processes, each test file in one (its fixtures built once)

$(VENV)/.installed-baselines: $(VENV)/.installed
	$(PIP) install -q -e '.[baselines]'
	touch $@

# The whole pipeline on the shipped black box (docs/demo.md); Grad-CAM needs the [baselines] extra.
# --force: a rerun replaces the previous demo's outputs in softcamify-demo/ (and nothing else there).
demo: $(VENV)/.installed-baselines
	$(VENV)/bin/softcamify demo --force

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
