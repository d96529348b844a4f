# Set-up: `make install` then `make test`. Everything runs offline.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
# `make install` installs the library and both stages (editable) with their console scripts
# (aukit-pretrain, aukit-finetune, aukit-cv, aukit-prepare, aukit-predict, aukit-export); they run
# from any folder, and `-c trainer/cpu.yaml` names a config shipped from conf/
BIN := $(VENV)/bin

.PHONY: install test test-fast lint format samples baselines bench bench-pretrain bench-finetune \
	bench-landmarks bench-quick results-table

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev,landmarks]"
	# MTCNN face detection (its weights ship in the wheel); --no-deps keeps our torch
	$(PY) -m pip install --no-deps facenet-pytorch==2.6.0

test:
	$(PY) -m pytest -q

# the edit loop: everything but the end-to-end runs marked slow (CI runs them all)
test-fast:
	$(PY) -m pytest -q -m "not slow"

lint:
	$(VENV)/bin/ruff check src pretrain finetune tests scripts

format:
	$(VENV)/bin/ruff check --select I --fix src pretrain finetune tests scripts
	$(VENV)/bin/ruff format src pretrain finetune tests scripts

samples:
	$(PY) -m aukit.data.synthau --grid docs/synthau_samples.png

baselines:
	$(PY) scripts/synthau_baselines.py --out docs/benchmarks.md

# throughput of both training steps per backbone and of the data pipeline (GPU: bf16, MFU)
bench:
	$(PY) scripts/bench_throughput.py $(ARGS)

# stage 1: OT solver timings, then linear-probe quality of the pretraining variants (3 seeds)
bench-pretrain:
	$(PY) scripts/bench_ot.py
	$(PY) scripts/bench_pretrain.py $(ARGS)

# landmark time per face, and predict frames/s with template vs dlib68 landmarks on one video
bench-landmarks:
	$(PY) scripts/bench_landmarks.py $(if $(CKPT),--ckpt $(CKPT)) $(ARGS)

# stage 2: (a) linear, (b) HiVA, (c) HiVA from stage 1, (d) ablations; all and 10% labels
bench-finetune:
	$(PY) scripts/bench_finetune.py $(ARGS)

# the README's results table, from docs/results/synthau_benchmark.json
results-table:
	$(PY) scripts/results_table.py

# one seed in about 20 minutes on 2 cores: the stage-1 probe (random init, the default recipe),
# then (a2), (b) and (c) at 10% labels, on detected landmarks; how its ordering agrees with the full table: docs/benchmarks.md
QUICK_OUT := --json docs/results/synthau_quick.json --out docs/benchmarks_quick.md
bench-quick:
	$(PY) scripts/bench_pretrain.py --seeds 0 --ckpt-dir runs/bench-quick/pretrain $(QUICK_OUT) \
		--variants "random init (no pretraining)" "the default recipe (conf/pretrain/synthau.yaml)"
	$(PY) scripts/bench_finetune.py --seeds 0 --fractions 0.1 --steps 600 $(QUICK_OUT) \
		--stage1 "runs/bench-quick/pretrain/default-seed{seed}/last.ckpt" \
		--log-dir runs/bench-quick/finetune --conditions \
		"(a2) Swin + AU regions + per-AU linear heads, scratch" "(b) HiVA, scratch" \
		"(c) HiVA, stage-1 init"

# ---- the two stages -------------------------------------------------------------------
# make pretrain [DATA=/folder/of/faces] [TRAINER=cpu|gpu|ddp] [ARGS="--trainer.max_epochs 50"]
# make finetune [DATASET=synthau|bp4d|disfa|csv] [DATA_ROOT=...] [FOLD=1|2|3]
#               [PRETRAINED=path.ckpt|none] [ARGS=...]
# make prepare DATASET=bp4d|disfa DATA_ROOT=/raw OUT=/aligned [WORKERS=8]
# make cv DATASET=bp4d|disfa|synthau DATA_ROOT=/aligned [ARGS="-- --trainer.devices 4"]
TRAINER ?= cpu
DATASET ?= synthau
DATA ?=
DATA_ROOT ?=
FOLD ?=
OUT ?=
WORKERS ?= $(shell nproc)
ARGS ?=
LATEST_PRETRAIN := $(shell ls -t runs/pretrain/*/checkpoints/last.ckpt 2>/dev/null | head -1)
# only SynthAU's config matches the default pretraining; real data sets name their own
PRETRAINED ?= $(if $(filter synthau,$(DATASET)),$(LATEST_PRETRAIN))
init_flag = $(if $(filter-out none,$(PRETRAINED)),--model.pretrained $(PRETRAINED))

.PHONY: pretrain finetune prepare cv predict export
pretrain:
	$(BIN)/aukit-pretrain fit -c trainer/$(TRAINER).yaml -c pretrain/synthau.yaml \
		$(if $(DATA),--data.source $(DATA) --data.landmarks auto) $(ARGS)

# a finetuning run composes, left to right: where it runs, the shared recipe, the data set and
# that data set's entry (aukit.configs.finetune_configs, which aukit-cv uses, lists the same)
FINETUNE_CONFIGS = -c trainer/$(TRAINER).yaml -c finetune/base.yaml -c data/$(DATASET).yaml \
	-c finetune/$(DATASET).yaml

finetune:
	$(BIN)/aukit-finetune fit $(FINETUNE_CONFIGS) \
		$(init_flag) $(if $(DATA_ROOT),--data.data_root $(DATA_ROOT)) \
		$(if $(FOLD),--data.fold $(FOLD)) $(ARGS)

prepare:
	$(BIN)/aukit-prepare --dataset $(DATASET) --data-root $(DATA_ROOT) --out $(OUT) \
		--workers $(WORKERS) $(ARGS)

cv:
	$(BIN)/aukit-cv --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
		--trainer-config trainer/$(TRAINER).yaml $(ARGS)

# make predict INPUT=image|folder|video CKPT=best.ckpt [OUT=dir]
#              [ARGS="--visualize --every 10 --video-out out.avi --device cuda"]
predict:
	$(BIN)/aukit-predict --input $(INPUT) --ckpt $(CKPT) $(if $(OUT),--out $(OUT)) $(ARGS)

# make export CKPT=best.ckpt FORMAT=onnx|torchscript [OUT=exported] [ARGS="--landmarks-input"]
FORMAT ?= onnx
export:
	$(BIN)/aukit-export --ckpt $(CKPT) --format $(FORMAT) --out $(or $(OUT),exported) $(ARGS)
