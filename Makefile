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

# ---- the two stages -------------------------------------------------------------------
# make pretrain [DATA=/folder/of/faces] [TRAINER=cpu|gpu|ddp] [ARGS="--trainer.max_epochs 50"]
# make finetune [DATASET=synthau|bp4d|disfa|csv] [PRETRAINED=path.ckpt|none] [ARGS=...]
TRAINER ?= cpu
DATASET ?= synthau
DATA ?=
ARGS ?=
LATEST_PRETRAIN := $(shell ls -t runs/pretrain/*/checkpoints/last.ckpt 2>/dev/null | head -1)
PRETRAINED ?= $(LATEST_PRETRAIN)
init_flag = $(if $(filter-out none,$(PRETRAINED)),--model.pretrained $(PRETRAINED))

.PHONY: pretrain finetune
pretrain:
	$(PY) -m pretrain fit -c conf/trainer/$(TRAINER).yaml -c conf/pretrain/synthau.yaml \
		$(if $(DATA),--data.source $(DATA)) $(ARGS)

finetune:
	$(PY) -m finetune fit -c conf/trainer/$(TRAINER).yaml -c conf/finetune/$(DATASET).yaml \
		$(init_flag) $(ARGS)
