# Two commands do all setup on a fresh clone: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8501
DATASETS ?= ../shared/datasets

# Nothing is downloaded at run time (see README, "Offline environment"). bloodcells also sets
# these itself on import of its CLI and app; they are exported here for every tool make runs.
export YOLO_OFFLINE ?= 1
export YOLO_AUTOINSTALL ?= false
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1
export YOLO_CONFIG_DIR ?= $(CURDIR)/.cache/ultralytics
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export OMP_NUM_THREADS ?= $(shell nproc)
export STREAMLIT_BROWSER_GATHER_USAGE_STATS ?= false

.PHONY: install run test lint models models-classifier models-detector models-attributes bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when requirements.txt or pyproject.toml change (torch dominates install time).
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

run: install
	$(PY) -m bloodcells db upgrade
	exec $(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

models: models-classifier models-detector models-attributes

# Reproduce the shipped models from ../shared/datasets (DATASETS=...); see README.
# The default tree, trained from scratch on PBC + Matek together (docs/classification.md).
models-classifier: install
	$(PY) -m bloodcells train --data $(DATASETS)/pbc --data $(DATASETS)/matek \
		--out models/classifier/default --backbone mobilenetv3_small_100 --size 128 \
		--epochs 24 --per-class 600 --patience 8 --batch-size 64 --lr 2e-3 --no-cross-site --no-stain-norm

# The shipped detector: YOLO11n from scratch on TXL-PBC + BCCD train (val images' twins left out),
# bounded by DETECTOR_HOURS of training on this CPU (epochs actually run: models/detector/metrics.json).
DETECTOR_HOURS ?= 1.85
models-detector: install
	$(PY) -m bloodcells train-detector --data $(DATASETS)/txl-pbc --data $(DATASETS)/bccd --model yolo11n.yaml \
		--epochs 60 --hours $(DETECTOR_HOURS) --imgsz 320 --batch 16 --workers 2 --patience 15 --out models/detector

# The morphology head reads the shipped classifier's features: run after models-classifier.
models-attributes: install
	$(PY) -m bloodcells train-attributes --csv $(DATASETS)/wbcatt/pbc_attributes.csv \
		--models models/classifier/default --out models/attributes/default

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done
