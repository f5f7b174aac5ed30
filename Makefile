# Two commands on a fresh machine (see README.md):
#   make reproduce [CONFIG=config/config.yaml]   set up, then run the pipeline (default: quick preset)
#   make test                                    set up, then lint and run the test suite
#   make test-slow                               the slow tests (the pipeline re-run, scripts' dry runs)
#   make test-slurm                              the test preset on a private Slurm cluster (root)
# Setup is a virtual environment in .venv with the package installed editable; it is redone only
# when pyproject.toml changes.

CONFIG ?= config/quick.yaml
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.scalelearn-installed

# Jobs call `python -m scalelearn ...`: the venv's python must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: help setup reproduce test test-slow test-slurm clean

help:
	@echo "make reproduce [CONFIG=config/quick.yaml|config/config.yaml|config/test.yaml]"
	@echo "make test"
	@echo "make test-slow"
	@echo "make test-slurm"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/snakemake --cores all --configfile $(CONFIG)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint
	$(BIN)/pytest

# Tests marked slow (README "Quick start"): minutes each, 14 minutes in all on the AMD machine of
# 2026-11-27 (.ci/run runs them after `make test`).
test-slow: $(STAMP)
	$(BIN)/pytest -m slow

# Starts munged, slurmctld and slurmd (installs Debian's slurm-wlm and munge when missing; needs
# root), runs config/test.yaml through profiles/slurm and compares with a local run. Minutes.
test-slurm: $(STAMP)
	$(BIN)/pytest -m slurm tests/test_slurm.py

clean:
	rm -rf results/aggregate results/data results/figures results/logs results/runs results/tables
