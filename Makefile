# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv on first use and reuse it while pyproject.toml and constraints.txt are unchanged.

VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# dvc.yaml's commands say `python`: make it the project's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run test benchmark

install: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --constraint constraints.txt --editable '.[test,bench]'
	touch $@

# The main job: `dvc repro` of dvc.yaml (for now the quick sparse-coding benchmark).
run: install
	dvc repro

test: install
	$(PYTHON) -m pytest

# The full-size benchmark (65,536 signals); writes benchmarks/results/sparse_coding.json.
benchmark: install
	$(PYTHON) benchmarks/sparse_coding.py
