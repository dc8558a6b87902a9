# FRLIE Serve: everyday commands. Variables can be overridden: make train DATA=/path/to/lol-pairs
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/lol-pairs
RUNS ?= ../runs
MODEL ?= model/weights/frlie.onnx
CHECKPOINT ?= $(RUNS)/stage2/best.pt
RUN ?= $(RUNS)/stage2
VERSION ?= $(notdir $(RUN))
SHIP_CHECKPOINT ?= best
# Training: the recipes that produced the shipped model (model/MODEL_CARD.md) are presets,
# training/presets/NAME.toml; the targets add the data, run folders, time budgets and TRAIN_FLAGS (flags
# override a preset). Runs resume from their last.pt, so repeating a target continues it.
STAGE1_MINUTES ?= 45
STAGE2_MINUTES ?= 125
# The ablation as it was run, at the 76-minute budget of model 1.0 (see the model card).
ABLATION_MINUTES ?= 100
TRAIN_FLAGS ?= --threads 2 --resume

.PHONY: help serve test lint train train-exposure train-normalised train-noise train-finetune train-colour ablation export ship qat calibrate evaluate bench gpu-check clean

help:
	@echo "make serve     serve the bundled model on http://127.0.0.1:8000 (installs serving deps)"
	@echo "make test      install everything and run the whole test suite"
	@echo "make lint      ruff (lint + format check) and mypy, as CI runs them before the tests"
	@echo "make train     stage 1 then stage 2 on DATA=$(DATA), runs in RUNS=$(RUNS) (resumable)"
	@echo "make train-exposure  the 2.0 recipe: exposure-robust stage 2 warm-started from the shipped weights"
	@echo "make train-normalised  the 2.2 recipe: the exposure mix on inputs normalised as the service does"
	@echo "make train-noise  the 2.3 recipe: validate INIT under the noise-aware normalisation, as a run to ship"
	@echo "make train-finetune  a 2.4 candidate (not adopted): stage 2 fine-tuned from INIT on LOL lows, normalised as the service does"
	@echo "make train-colour  a 3.0 candidate (issue 22): the whole stage 2 from scratch with colour-diverse inputs"
	@echo "make ablation  the end-to-end 'w/o FR' ablation at the same budget"
	@echo "make export    export CHECKPOINT=$(CHECKPOINT) to MODEL=$(MODEL)"
	@echo "make ship      export RUN=$(RUN) into model/weights with its training record (0.2 dB rule)"
	@echo "make qat       quantization-aware fine-tuning of model/weights/frlie-int8.onnx on DATA/train, gated on val (resumable)"
	@echo "make calibrate fit the enhancement policy of MODEL on DATA/train and store it in the file"
	@echo "make evaluate  PSNR/SSIM/NIQE of MODEL on DATA/val with baselines"
	@echo "make bench     CPU benchmarks"
	@echo "make gpu-check on a lent GPU machine: CUDA training speed, torch latency and fp16 error (bench/gpu_check.py)"

$(VENV)/.serve-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.serve-installed
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $@

serve: $(VENV)/.serve-installed
	$(PY) -m service serve

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: $(VENV)/.dev-installed
	bash .ci/install-test-tools.sh
	FRLIE_DATA=$${FRLIE_DATA:-$(DATA)} $(PY) -m pytest

train: $(VENV)/.dev-installed
	$(PY) -m training stage1 --preset stage1-1.1 --data $(DATA) --out $(RUNS)/stage1 \
		--max-minutes $(STAGE1_MINUTES) $(TRAIN_FLAGS)
	$(PY) -m training stage2 --preset stage2-1.1 --data $(DATA) --out $(RUNS)/stage2 \
		--stage1 $(RUNS)/stage1/best.pt --max-minutes $(STAGE2_MINUTES) $(TRAIN_FLAGS)

# Model 2.0 (model/MODEL_CARD.md): stage 2 from the shipped weights with exposure augmentation.
EXPOSURE_MINUTES ?= 100
train-exposure: $(VENV)/.dev-installed
	$(PY) -m training stage2 --preset exposure-2.0 --data $(DATA) --out $(RUNS)/stage2-exposure \
		--init model/weights/frlie.pt --max-minutes $(EXPOSURE_MINUTES) $(TRAIN_FLAGS)

# Model 2.2: the exposure mix on inputs normalised as the service normalises uploads, warm-started
# from INIT (the 2.2 release used the 1.1 weights: `git show a6b0533:model/weights/frlie.pt`).
NORMALISED_MINUTES ?= 60
NOISE_MINUTES ?= 30
INIT ?= model/weights/frlie.pt
train-normalised: $(VENV)/.dev-installed
	$(PY) -m training stage2 --preset normalised-2.2 --data $(DATA) --out $(RUNS)/stage2-normalised \
		--init $(INIT) --max-minutes $(NORMALISED_MINUTES) $(TRAIN_FLAGS)

# Model 2.3: INIT (the 2.3 release: the 1.1 weights) validated under the noise-aware normalisation
# (the digital gain read from the noise divided out first); the preset trains 0 steps (see it).
train-noise: $(VENV)/.dev-installed
	$(PY) -m training stage2 --preset noise-2.3 --data $(DATA) --out $(RUNS)/stage2-noise \
		--init $(INIT) --max-minutes $(NOISE_MINUTES) $(TRAIN_FLAGS)

# A 2.4 candidate (not adopted, see the preset): INIT's FRNet fine-tuned on plain
# LOL lows under the service's normalisation, with 192 px crops, 8-way flips and an EMA.
FINETUNE_MINUTES ?= 95
train-finetune: $(VENV)/.dev-installed
	$(PY) -m training stage2 --preset finetune-2.4 --data $(DATA) --out $(RUNS)/stage2-finetune \
		--init $(INIT) --max-minutes $(FINETUNE_MINUTES) $(TRAIN_FLAGS)

# A 3.0 candidate (issue 22): the whole stage-2 schedule with colour-diverse inputs, FRNet from scratch
# on the shipped encoder/decoder (see the preset; colour-2.5 is the fine-tune it replaces).
COLOUR_MINUTES ?= 200
train-colour: $(VENV)/.dev-installed
	$(PY) -m training stage2 --preset colour-3.0 --data $(DATA) --out $(RUNS)/stage2-colour-3.0 \
		--stage1 $(INIT) --max-minutes $(COLOUR_MINUTES) $(TRAIN_FLAGS)

ablation: $(VENV)/.dev-installed
	$(PY) -m training e2e --preset ablation-e2e --data $(DATA) --out $(RUNS)/e2e \
		--max-minutes $(ABLATION_MINUTES) $(TRAIN_FLAGS)

export: $(VENV)/.dev-installed
	$(PY) -m training export --checkpoint $(CHECKPOINT) --out $(MODEL)

ship: $(VENV)/.dev-installed
	$(PY) -m training ship --run $(RUN) --checkpoint $(SHIP_CHECKPOINT) --model-version "$(VERSION)" --data $(DATA)

# The bundled int8 file in two resumable runs: 600 steps learning fp32's answers, then 600 from there
# with half the crops JPEG q90 and the no-worse term (docs/training.md). Run again until it ships.
QAT_MINUTES ?= 60
qat: $(VENV)/.dev-installed
	test -f $(RUNS)/qat-distill/int8.onnx || $(PY) -m training qat --data $(DATA) --run-dir $(RUNS)/qat-distill \
		--out $(RUNS)/qat-distill/int8.onnx --max-minutes $(QAT_MINUTES)
	test ! -f $(RUNS)/qat-distill/int8.onnx || $(PY) -m training qat --data $(DATA) --run-dir $(RUNS)/qat \
		--init-state $(RUNS)/qat-distill/qat-state.pt --jpeg-share 0.5 --no-worse-weight 0.3 --max-minutes $(QAT_MINUTES)

calibrate: $(VENV)/.dev-installed
	$(PY) -m training calibrate --model $(MODEL) --data $(DATA) --table $(RUNS)/calibration/table.jsonl

evaluate: $(VENV)/.dev-installed
	$(PY) -m training evaluate --model $(MODEL) --data $(DATA) --split val
	$(PY) -m training evaluate --model $(MODEL) --data $(DATA) --split val --strength auto --exposures \
		--no-baselines --no-niqe

bench: $(VENV)/.dev-installed
	$(PY) -m bench all

# The one bounded check for a lent GPU machine (bench/gpu_check.py: CUDA training speed in bf16 and
# fp16, torch latency and fp16 error, ONNX Runtime's CUDA provider where installed). Here, first:
# .ci/gpu-wheels.sh (the packages the machine's image lacks, into .whl); then the device `run` with
# carry [".whl"] and the command `make gpu-check`. GPU_PY is the machine's own Python, which has torch.
GPU_PY ?= python3
GPU_CHECK_SECONDS ?= 480
gpu-check:
	if [ -d .whl ]; then $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target /tmp/gpu-site .whl/*.whl; fi
	PYTHONPATH=/tmp/gpu-site:$(CURDIR) PYTHONUNBUFFERED=1 timeout $(GPU_CHECK_SECONDS) \
		$(GPU_PY) -m bench.gpu_check --out $${OUT:-gpu-check}

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
