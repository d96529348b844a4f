# Set-up: `make install` then `make test`. Everything runs offline.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test lint format samples baselines

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"

test:
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check src pretrain finetune tests scripts

format:
	$(VENV)/bin/ruff check --select I --fix src pretrain finetune tests scripts
	$(VENV)/bin/ruff format src pretrain finetune tests scripts

samples:
	$(PY) -m aukit.data.synthau --grid docs/synthau_samples.png

baselines:
	$(PY) scripts/synthau_baselines.py --out docs/benchmarks.md
